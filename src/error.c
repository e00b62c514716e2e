/* error.c — status strings, error messages and checked allocation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

const char *ds_status_str(ds_status s)
{
    switch (s) {
    case DS_OK: return "ok";
    case DS_ERR_INVALID_ARG: return "invalid argument";
    case DS_ERR_IO: return "I/O error";
    case DS_ERR_FORMAT: return "format error";
    case DS_ERR_UNSUPPORTED: return "unsupported";
    case DS_ERR_NOMEM: return "out of memory";
    case DS_ERR_CONTEXT_FULL: return "context full";
    case DS_ERR_INPUT: return "invalid input";
    }
    return "unknown error";
}

const char *ds_version(void) { return DSINFER_VERSION; }

ds_status ds_fail(ds_error *err, ds_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void ds_error_clear(ds_error *err)
{
    if (err) {
        err->code = DS_OK;
        err->msg[0] = 0;
    }
}

void *ds_calloc(size_t n, size_t size, ds_error *err)
{
    void *p = (n && size) ? calloc(n, size) : calloc(1, 1);
    if (!p)
        ds_fail(err, DS_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *ds_alloc_aligned(size_t bytes, ds_error *err)
{
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) {
        ds_fail(err, DS_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}
