/* mapfile.c — read-only file mapping (see mapfile.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"
#include "mapfile.h"

static ds_status map_fail(ds_mapped_file *f, ds_error *err, ds_status code,
                          const char *path, const char *what, int errnum)
{
    ds_status s = errnum ? ds_fail(err, code, "%s: %s: %s", path, what, strerror(errnum))
                         : ds_fail(err, code, "%s: %s", path, what);
    ds_unmap_file(f);
    return s;
}

ds_status ds_map_file(const char *path, ds_mapped_file *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (!path)
        return ds_fail(err, DS_ERR_INVALID_ARG, "ds_map_file: NULL path");
    out->path = strdup(path);
    if (!out->path)
        return ds_fail(err, DS_ERR_NOMEM, "%s: out of memory", path);

    /* O_NONBLOCK: a FIFO in a model directory is refused below instead of
     * waiting in open() for a writer; regular files ignore the flag */
    out->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (out->fd < 0)
        return map_fail(out, err, DS_ERR_IO, path, "cannot open", errno);

    struct stat st;
    if (fstat(out->fd, &st) != 0)
        return map_fail(out, err, DS_ERR_IO, path, "cannot stat", errno);
    /* A directory opens fine with O_RDONLY but mmap would fail obscurely. */
    if (!S_ISREG(st.st_mode))
        return map_fail(out, err, DS_ERR_IO, path, "not a regular file", 0);
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)SIZE_MAX)
        return map_fail(out, err, DS_ERR_IO, path, "file too large to map", 0);

    out->size = (uint64_t)st.st_size;
    if (out->size == 0)
        return DS_OK;   /* mmap of length 0 is EINVAL; an empty file is still a file */

    void *p = mmap(NULL, (size_t)out->size, PROT_READ, MAP_PRIVATE, out->fd, 0);
    if (p == MAP_FAILED) {
        out->size = 0;
        return map_fail(out, err, DS_ERR_IO, path, "cannot map", errno);
    }
    out->base = p;
    return DS_OK;
}

void ds_unmap_file(ds_mapped_file *f)
{
    if (!f)
        return;
    if (f->base && f->size)
        munmap((void *)f->base, (size_t)f->size);
    /* path is set whenever fd was opened, so a zeroed struct never closes fd 0 */
    if (f->path && f->fd >= 0)
        close(f->fd);
    free(f->path);
    f->path = NULL;
    f->base = NULL;
    f->size = 0;
    f->fd = -1;
}

/* Anonymous memory backed by transparent huge pages instead of the page
 * cache: no page faults or 4 KiB TLB misses while weights stream through
 * the kernels, and the bytes stay put under memory pressure. */
ds_status ds_mapped_to_ram(ds_mapped_file *f, int drop_cache, ds_error *err)
{
    if (!f->base || !f->size)
        return DS_OK;
    size_t len = (size_t)f->size;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return ds_fail(err, DS_ERR_NOMEM, "%s: cannot allocate %zu bytes to load it into RAM: %s", f->path, len,
                       strerror(errno));
    madvise(p, len, MADV_HUGEPAGE);
    size_t done = 0;
    while (done < len) {
        size_t want = len - done > ((size_t)1 << 30) ? (size_t)1 << 30 : len - done;
        ssize_t r = pread(f->fd, (char *)p + done, want, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            munmap(p, len);
            return ds_fail(err, DS_ERR_IO, "%s: cannot read at offset %zu: %s", f->path, done,
                           r < 0 ? strerror(e) : "file shrank while loading");
        }
        if (drop_cache)
            posix_fadvise(f->fd, (off_t)done, (off_t)r, POSIX_FADV_DONTNEED);
        done += (size_t)r;
    }
    mprotect(p, len, PROT_READ);
    munmap((void *)f->base, len);
    f->base = p;
    return DS_OK;
}
