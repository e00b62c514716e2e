/* st_writer.h — a small streaming safetensors writer for the dsinfer tools
 * (dsinfer-mkmodel, dsinfer-quantize).
 *
 * A file is written in three steps: declare every tensor (name, dtype,
 * shape) with st_writer_add, then st_writer_begin writes the header, then
 * the tensors' bytes are appended in declaration order with st_writer_write
 * (any chunking), and st_writer_finish checks that every declared byte came,
 * fsyncs, closes and renames PATH.tmp to PATH.  Nothing is held in memory but
 * the header and a small write buffer, so tensors can be produced one at a
 * time.
 *
 * Layout: 8-byte little-endian header length N, N bytes of compact JSON
 * ({"__metadata__":{"format":"pt",...}, "name":{"dtype":..,"shape":[..],
 * "data_offsets":[begin,end]}, ...} in declaration order) padded with spaces
 * to a multiple of 8, then the data, tensors back to back.
 *
 * Every function returning int returns 0 on success and -1 on failure, with
 * a one-line message naming the file in st_writer_error(); after a failure
 * the writer only accepts st_writer_abort / st_writer_free. */
#ifndef DS_ST_WRITER_H
#define DS_ST_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include "dtype.h"

#define ST_MAX_DIMS 8

typedef struct st_writer st_writer;

/* path: the final file name; the data goes to "path.tmp" until
 * st_writer_finish. Returns NULL when out of memory. */
st_writer *st_writer_new(const char *path);
/* Adds a string to "__metadata__" (besides "format":"pt"). */
int st_writer_set_meta(st_writer *w, const char *key, const char *value);
/* Declares the next tensor. Names must be unique. */
int st_writer_add(st_writer *w, const char *name, ds_dtype dt, int ndim, const int64_t *shape);
/* Padding for aligned layouts (dsinfer-quantize --repack): safetensors has
 * no holes between tensors, so a gap is an explicit U8 tensor named
 * ST_PAD_PREFIX<n> whose zero bytes the writer fills itself (callers never
 * write them).  dsinfer's loader skips these names.
 * st_writer_set_align: the data area starts at a multiple of align bytes of
 * the file (the header is padded with spaces), so data offsets aligned to
 * align are file offsets aligned to it too.  align is a power of two >= 8.
 * st_writer_pad_to: declares a padding tensor, if needed, so the next
 * declared tensor starts at a multiple of align in the data area. */
#define ST_PAD_PREFIX "__dsinfer_pad."
int st_writer_set_align(st_writer *w, uint64_t align);
int st_writer_pad_to(st_writer *w, uint64_t align);
/* Number of declared tensors (padding included) and the sum of their data bytes. */
size_t st_writer_count(const st_writer *w);
uint64_t st_writer_data_size(const st_writer *w);
/* Bytes a tensor of this dtype and shape takes (0 on overflow or bad dtype). */
uint64_t st_tensor_bytes(ds_dtype dt, int ndim, const int64_t *shape);

/* Creates path.tmp and writes the header. */
int st_writer_begin(st_writer *w);
/* Appends n data bytes (they belong to the declared tensors in order;
 * writing more than declared is an error). */
int st_writer_write(st_writer *w, const void *data, size_t n);
/* Index of the tensor the next byte belongs to (== count when complete). */
size_t st_writer_current(const st_writer *w);
/* Checks completeness, flushes, fsyncs, closes and renames path.tmp -> path. */
int st_writer_finish(st_writer *w);
/* Closes and removes path.tmp (harmless if nothing was begun). */
void st_writer_abort(st_writer *w);
void st_writer_free(st_writer *w);
const char *st_writer_error(const st_writer *w);
/* Bytes of the finished file (header included); valid after begin. */
uint64_t st_writer_file_size(const st_writer *w);

/* Writes len bytes to path atomically (path.tmp, fsync, rename). On error
 * writes a message naming the file into err (errlen bytes) and returns -1. */
int st_write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen);
/* Copies src to dst atomically the same way. */
int st_copy_file_atomic(const char *src, const char *dst, char *err, size_t errlen);
/* fsyncs a directory so that renames inside it are durable (errors other
 * than "not supported" are reported). */
int st_fsync_dir(const char *dir, char *err, size_t errlen);

/* model.safetensors.index.json: {"metadata":{"total_size":N, extra strings},
 * "weight_map":{tensor: shard file name, ...}} with sorted keys. */
typedef struct st_index st_index;
st_index *st_index_new(void);
/* Returns -1 when out of memory or when the tensor is already mapped. */
int st_index_add(st_index *ix, const char *tensor, const char *shard);
/* Adds a string to the index's "metadata" (besides total_size). */
int st_index_set_meta(st_index *ix, const char *key, const char *value);
/* total_size: sum of the tensors' data bytes (headers excluded). Written atomically. */
int st_index_write(const st_index *ix, const char *path, uint64_t total_size, char *err, size_t errlen);
void st_index_free(st_index *ix);

#endif
