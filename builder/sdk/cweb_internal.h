/*
 * cweb_internal.h - private interface between the parts of the glue
 * (cweb_glue.c, cweb_services.c). Not for modules.
 */
#ifndef CWEB_INTERNAL_H
#define CWEB_INTERNAL_H

#include "cweb.h"

/* The one context every handler, socket callback and job receives. */
extern cweb_context_t cweb_g_ctx;

/* Called once from cweb_abi_init with the server's data directory. */
void cweb_services_init(const char *data_dir);
/* Runs SYNC work that scheduler_add() queued during the handler just returned. */
void cweb_services_after_handler(void);
/* Called before the module's unload: runs deferred work still queued. */
void cweb_services_retire(void);

#endif /* CWEB_INTERNAL_H */
