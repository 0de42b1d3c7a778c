/*
 * mcup_workspace.c - mcup_init(): the library's own static workspace.
 *
 * A file of its own so that an application calling only mcup_init_with_arena() does not link
 * this buffer: a static library contributes an object only when one of its symbols is needed.
 */
#include "mcup_model.h"

static int32_t mcup_static_workspace[MCUP_WORKSPACE_BYTES > 0 ? MCUP_WORKSPACE_BYTES / 4 : 1];

int mcup_init(void)
{
    return mcup_init_with_arena(mcup_static_workspace, sizeof mcup_static_workspace);
}
