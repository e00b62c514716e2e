/* outfiles.c — whole-or-nothing output files and the output path checks
 * (see outfiles.h). */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.h"
#include "outfiles.h"

/* ---- path checks --------------------------------------------------------- */

/* The absolute path path names (its directory resolved, the file itself
 * when it exists), malloc'ed; NULL when its directory does not exist
 * (opening it will fail with a clear error anyway). */
static char *canonical(const char *path)
{
    char *r = realpath(path, NULL);
    if (r)
        return r;
    char *d = strdup(path), *b = strdup(path), *out = NULL;
    char *dir = d ? realpath(dirname(d), NULL) : NULL;
    if (dir && b) {
        const char *base = basename(b);
        size_t n = strlen(dir) + strlen(base) + 2;
        if ((out = malloc(n)))
            snprintf(out, n, "%s/%s", strcmp(dir, "/") ? dir : "", base);
    }
    free(dir), free(d), free(b);
    return out;
}

static int same_file(const char *a, const char *b, const char *ca, const char *cb)
{
    struct stat sa, sb;
    if (ca && cb && strcmp(ca, cb) == 0)
        return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Whether existing file c (canonical) is one a checkpoint directory holds. */
static int checkpoint_file(const char *c, const char *model_canon)
{
    size_t n = strlen(model_canon), len = strlen(c);
    if (strncmp(c, model_canon, n) != 0 || c[n] != '/' || access(c, F_OK) != 0)
        return 0;
    return (len > 5 && strcmp(c + len - 5, ".json") == 0) || (len > 12 && strcmp(c + len - 12, ".safetensors") == 0);
}

void tool_check_outputs(const char *const *outs, const char *const *opts, int nout, const char *const *ins, int nin,
                        const char *model_dir)
{
    char *mc = model_dir ? realpath(model_dir, NULL) : NULL;
    for (int i = 0; i < nout; i++) {
        if (!outs[i])
            continue;
        char *ci = canonical(outs[i]);
        for (int j = 0; j < i; j++) {
            if (!outs[j])
                continue;
            char *cj = canonical(outs[j]);
            const int same = same_file(outs[i], outs[j], ci, cj);
            free(cj);
            if (same)
                tool_die(EXIT_USAGE, "%s and %s name the same file %s", opts[j], opts[i], outs[i]);
        }
        for (int j = 0; j < nin; j++) {
            if (!ins[j])
                continue;
            char *cj = canonical(ins[j]);
            const int same = same_file(outs[i], ins[j], ci, cj);
            free(cj);
            if (same)
                tool_die(EXIT_USAGE, "%s %s is an input of this run", opts[i], outs[i]);
        }
        if (ci && mc && checkpoint_file(ci, mc))
            tool_die(EXIT_USAGE, "%s %s would overwrite a file of the checkpoint %s", opts[i], outs[i], model_dir);
        free(ci);
    }
    free(mc);
}

/* ---- whole-or-nothing outputs -------------------------------------------- */

struct tool_outfile {
    char *path;     /* what is renamed over (the target of a symbolic link) */
    char *tmp;      /* NULL when written in place (a device, a pipe) */
    FILE *f;
    tool_outfile *next;
};

static tool_outfile *outs;

/* At exit (a tool_die included): the temporaries not renamed go. */
static void remove_temporaries(void)
{
    for (tool_outfile *o = outs; o; o = o->next)
        if (o->tmp)
            unlink(o->tmp);
}

tool_outfile *tool_outfile_open(const char *path)
{
    tool_outfile *o = calloc(1, sizeof *o);
    char *target = realpath(path, NULL);
    struct stat st;
    if (!o)
        tool_die(EXIT_RUNTIME, "out of memory");
    if (!outs)
        atexit(remove_temporaries);
    o->path = target ? target : strdup(path);
    if (!o->path)
        tool_die(EXIT_RUNTIME, "out of memory");
    if (stat(o->path, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* /dev/null, a pipe: written as it is (a rename would replace it) */
        if (!(o->f = fopen(o->path, "wb")))
            tool_die(EXIT_IO, "cannot create %s: %s", path, strerror(errno));
    } else {
        const size_t n = strlen(o->path) + 16;
        if (!(o->tmp = malloc(n)))
            tool_die(EXIT_RUNTIME, "out of memory");
        snprintf(o->tmp, n, "%s.tmp-XXXXXX", o->path);
        const int fd = mkstemp(o->tmp);
        if (fd < 0) {
            const int e = errno;
            free(o->tmp);
            o->tmp = NULL;
            tool_die(EXIT_IO, "cannot create %s: %s", path, strerror(e));
        }
        const mode_t um = umask(0);
        umask(um);
        if (fchmod(fd, 0666 & ~um) != 0 || !(o->f = fdopen(fd, "wb"))) {
            const int e = errno;
            close(fd);
            o->next = outs;
            outs = o;
            tool_die(EXIT_IO, "cannot create %s: %s", path, strerror(e));
        }
    }
    o->next = outs;
    outs = o;
    return o;
}

void tool_outfile_write(tool_outfile *f, const void *data, size_t bytes)
{
    if (bytes && fwrite(data, 1, bytes, f->f) != bytes)
        tool_die(EXIT_IO, "cannot write %s: %s", f->path, strerror(errno));
}

void tool_outfiles_commit(void)
{
    for (tool_outfile *o = outs; o; o = o->next) {
        const int bad = fclose(o->f) != 0;
        o->f = NULL;
        if (bad)
            tool_die(EXIT_IO, "cannot write %s: %s", o->path, strerror(errno));
    }
    for (tool_outfile *o = outs; o; o = o->next) {
        if (o->tmp && rename(o->tmp, o->path) != 0)
            tool_die(EXIT_IO, "cannot rename %s to %s: %s", o->tmp, o->path, strerror(errno));
        free(o->tmp);
        o->tmp = NULL;
    }
}
