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

/* The whole file in anonymous memory backed by transparent huge pages: no
 * page-cache faults or 4 KiB TLB misses while the weights are streamed
 * through the kernels. */
static ds_status load_into_ram(ds_mapped_file *out, ds_error *err, const char *path)
{
    size_t len = (size_t)out->size;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        out->size = 0;
        return map_fail(out, err, DS_ERR_NOMEM, path, "cannot allocate memory for", errno);
    }
    madvise(p, len, MADV_HUGEPAGE);
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(out->fd, (char *)p + done, len - done > (1u << 30) ? (1u << 30) : len - done, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            munmap(p, len);
            out->size = 0;
            return map_fail(out, err, DS_ERR_IO, path, "cannot read", e);
        }
        done += (size_t)r;
    }
    mprotect(p, len, PROT_READ);
    out->base = p;
    return DS_OK;
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

    out->fd = open(path, O_RDONLY | O_CLOEXEC);
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

    const char *how = getenv("DSINFER_MAP");
    if (how && strcmp(how, "ram") == 0)
        return load_into_ram(out, err, path);
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
