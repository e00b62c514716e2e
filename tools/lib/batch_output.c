/* batch_output.c — appending records durably and resuming from an existing
 * output file (see batch_output.h for the design). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "batch_output.h"
#include "common.h"

char *batch_record_key(const json_t *record, int *duplicate)
{
    char num[32];
    const json_t *v = json_object_get(record, "custom_id");
    const json_t *code = json_object_get(json_object_get(record, "error"), "code");
    if (!v)
        v = json_object_get(record, "id");
    *duplicate = json_is_string(code) && strcmp(json_string_value(code), BATCH_DUPLICATE_CODE) == 0;
    if (json_is_string(v) && json_string_length(v) > 0)
        return batch_xstrdup(json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return batch_xstrdup(num);
    }
    return NULL;
}

/* Refuses a file this tool did not write: appending to it, or cutting its
 * last line as a torn record, would damage what the user named by mistake
 * (a config, a model shard). */
static void refuse_foreign(const batch_output *out, const char *why, long line)
{
    tool_die(EXIT_USAGE, "%s: line %ld %s, so this is not a dsinfer-batch output; it was left as it is", out->path,
             line, why);
}

/* One complete line of an existing output: an id completed, or one more
 * duplicate record of an id. */
static void note_record(batch_output *out, const char *line, size_t len, long lineno)
{
    int dup;
    json_t *rec = json_loadb(line, len, 0, NULL);
    char *key = json_is_object(rec) ? batch_record_key(rec, &dup) : NULL;
    json_decref(rec);
    if (!key)
        refuse_foreign(out, "is not a record with an id", lineno);
    batch_strmap_add(dup ? out->dups : out->done, key, 1);
    out->records++;
    free(key);
}

/* Whether a last line without its newline can be a record cut by a crash:
 * records are JSON objects whose first key is "id". */
static int torn_record_start(const char *s, size_t n)
{
    static const char start[] = "{\"id\"";
    size_t i = 0, k = 0;
    for (; i < n && k < sizeof start - 1; i++) {
        if (k == 1 && (s[i] == ' ' || s[i] == '\t'))
            continue;
        if (s[i] != start[k++])
            return 0;
    }
    return 1;
}

/* Reads every complete line back; returns the offset just past the last
 * '\n' (what is beyond it is a torn write, checked to be one). */
static off_t scan_records(batch_output *out)
{
    FILE *f = fopen(out->path, "rb");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    off_t end = 0;
    long lineno = 0;
    if (!f)
        tool_die(EXIT_IO, "cannot read %s: %s", out->path, strerror(errno));
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[n - 1] != '\n') {  /* the partial last line */
            if (!torn_record_start(line, (size_t)n))
                refuse_foreign(out, "has no newline and does not begin like a record", lineno);
            break;
        }
        end += n;
        note_record(out, line, (size_t)n - 1, lineno);
    }
    if (ferror(f))
        tool_die(EXIT_IO, "cannot read %s: %s", out->path, strerror(errno));
    free(line);
    fclose(f);
    return end;
}

/* After creating the file, its directory entry must be durable too, or a
 * power loss could lose the whole output despite the per-record syncs. */
static void sync_parent_dir(const char *path)
{
    char *copy = batch_xstrdup(path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
}

void batch_output_open(const char *path, batch_output *out)
{
    struct stat st;
    int existed = stat(path, &st) == 0;
    *out = (batch_output){.path = path, .sync = 1};
    out->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out->fd < 0)
        tool_die(EXIT_IO, "cannot open %s: %s", path, strerror(errno));
    if (fstat(out->fd, &st) != 0 || !S_ISREG(st.st_mode))
        tool_die(EXIT_IO, "%s: not a regular file", path);
    if (flock(out->fd, LOCK_EX | LOCK_NB) != 0)
        tool_die(EXIT_IO, "%s: %s", path,
                 errno == EWOULDBLOCK ? "another dsinfer-batch is writing this file" : strerror(errno));
    out->done = batch_strmap_new();
    out->dups = batch_strmap_new();
    off_t end = scan_records(out);
    if (fstat(out->fd, &st) != 0)
        tool_die(EXIT_IO, "cannot stat %s: %s", path, strerror(errno));
    if (st.st_size > end) {
        /* A record cut by a crash: remove it so the next append starts on
         * a fresh line; its id is not complete and will be redone. */
        out->torn_bytes = (size_t)(st.st_size - end);
        if (ftruncate(out->fd, end) != 0 || fsync(out->fd) != 0)
            tool_die(EXIT_IO, "cannot truncate the partial last line of %s: %s", path, strerror(errno));
    }
    out->size = end;
    if (!existed)
        sync_parent_dir(path);
}

/* write() until done; a short write of a regular file means a full disk or
 * a quota; a signal cannot cut it short since handlers use SA_RESTART. */
static int write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w == 0)
            errno = ENOSPC;
        if (w <= 0)
            return -1;
        s += w;
        len -= (size_t)w;
    }
    return 0;
}

void batch_output_append(batch_output *out, const json_t *record)
{
    char *text = json_dumps(record, JSON_COMPACT);
    if (!text)
        tool_die(EXIT_RUNTIME, "cannot serialise a record (out of memory?)");
    size_t len = strlen(text);
    char *line = batch_xmalloc(len + 1);
    memcpy(line, text, len);
    line[len] = '\n';
    free(text);
    /* One write() of the whole line: the file only ever grows by complete
     * records, except when the disk fills mid-line, which is undone here
     * (and by the truncation on the next start if we die first). */
    if (write_all(out->fd, line, len + 1) != 0) {
        int saved = errno;
        if (ftruncate(out->fd, out->size) != 0) {
            /* nothing more to do: the next run cuts the torn line */
        }
        tool_die(EXIT_IO, "cannot write %s: %s", out->path, strerror(saved));
    }
    free(line);
    if (out->sync && fdatasync(out->fd) != 0)
        tool_die(EXIT_IO, "cannot sync %s: %s", out->path, strerror(errno));
    out->size += (off_t)len + 1;
}

void batch_output_close(batch_output *out)
{
    if (out->fd >= 0 && close(out->fd) != 0)
        tool_die(EXIT_IO, "cannot close %s: %s", out->path, strerror(errno));
    out->fd = -1;
    batch_strmap_free(out->done);
    batch_strmap_free(out->dups);
    out->done = out->dups = NULL;
}
