/* batch_output.h — the output JSONL file of dsinfer-batch and its crash
 * safety: records are appended whole (one write() on an O_APPEND
 * descriptor, then fdatasync), and on start an existing output is read
 * back to learn which ids are complete, after cutting off a torn last line.
 * The output is its own journal: there is no side file to lose or to
 * disagree with it. */
#ifndef DS_BATCH_OUTPUT_H
#define DS_BATCH_OUTPUT_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>
#include "batch_util.h"

/* The error code of the record a repeated id gets; such records are
 * counted apart from the records that complete an id. */
#define BATCH_DUPLICATE_CODE "duplicate_id"

typedef struct batch_output {
    int fd;
    const char *path;
    off_t size;              /* bytes of complete records in the file */
    int sync;                /* fdatasync after every record (default 1) */
    batch_strmap *done;      /* ids with a complete (non-duplicate) record */
    batch_strmap *dups;      /* id -> number of duplicate_id records written */
    long records;            /* complete records found on open */
    size_t torn_bytes;       /* bytes of a partial last line cut off on open */
} batch_output;

/* Opens (creating) the output, takes an exclusive lock on it (a second job
 * on the same file is refused) and reads back its complete records.  Dies
 * with EXIT_IO on any failure, and with EXIT_USAGE, changing nothing, when
 * the file holds anything but records (and a last one cut by a crash). */
void batch_output_open(const char *path, batch_output *out);
/* Appends one record as a single line and makes it durable.  Dies with
 * EXIT_IO when it cannot (after cutting off whatever part got written). */
void batch_output_append(batch_output *out, const json_t *record);
void batch_output_close(batch_output *out);

/* The key a record belongs to ("custom_id", else "id"), malloc'ed; NULL
 * when it has none.  *duplicate is set for duplicate_id error records. */
char *batch_record_key(const json_t *record, int *duplicate);

#endif
