/* outfiles.h — output files a tool writes whole or not at all, and the
 * check that no output names one of the user's inputs.
 *
 * Each output is written to a temporary file beside it, created when the
 * tool starts (so an unwritable path fails before the work, not after it)
 * and renamed over the path only when every output has been written: a
 * failed run (a bad model, a full disk, a signal's exit) leaves the user's
 * existing files as they were and removes its temporaries at exit. */
#ifndef DS_TOOL_OUTFILES_H
#define DS_TOOL_OUTFILES_H

#include <stddef.h>

/* Dies with EXIT_USAGE when two of outs[0..nout) (NULL entries skipped)
 * name the same file, when one names an input of ins[0..nin), or an
 * existing file of the checkpoint directory model_dir (NULL: none).
 * opts[i] is the option that gave outs[i], for the message. */
void tool_check_outputs(const char *const *outs, const char *const *opts, int nout, const char *const *ins, int nin,
                        const char *model_dir);

typedef struct tool_outfile tool_outfile;

/* Creates the temporary for path (dies with EXIT_IO when it cannot). */
tool_outfile *tool_outfile_open(const char *path);
/* Appends bytes (dies with EXIT_IO on a write error). */
void tool_outfile_write(tool_outfile *f, const void *data, size_t bytes);
/* Closes every open output and renames each over its path; dies with
 * EXIT_IO (removing the temporaries not yet renamed) when one fails. */
void tool_outfiles_commit(void);

#endif
