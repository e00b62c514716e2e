/* mapfile.h — read-only memory mapping of whole files.  Knows nothing of
 * models: it hands out bytes and reports failures with the path. */
#ifndef DS_MAPFILE_H
#define DS_MAPFILE_H

#include <stdint.h>
#include "dsinfer.h"

typedef struct ds_mapped_file {
    char *path;           /* owned copy of the path given to ds_map_file */
    int fd;               /* kept open (O_RDONLY) for pread-style access; -1 when unmapped */
    const uint8_t *base;  /* NULL for an empty file */
    uint64_t size;
} ds_mapped_file;

/* Maps PATH read-only (PROT_READ, MAP_PRIVATE).  An empty file maps to
 * base == NULL, size == 0.  On failure *out is left unmapped (fd -1) and
 * the message names the path and the system error. */
ds_status ds_map_file(const char *path, ds_mapped_file *out, ds_error *err);
/* Replaces the file mapping by a private copy in anonymous (huge-page)
 * memory with the same contents; base changes, size does not.  With
 * drop_cache the file's page-cache pages are released behind the copy, so
 * a file that fits in memory only once is not held twice. */
ds_status ds_mapped_to_ram(ds_mapped_file *f, int drop_cache, ds_error *err);
/* Unmaps and closes; safe on a zeroed or already unmapped struct. */
void ds_unmap_file(ds_mapped_file *f);

#endif
