/*
 * cweb_services.c - the context every handler receives, and the services
 * in it that need no file of their own: symbols. The container is
 * cweb_map.c, deferred work cweb_scheduler.c; what modules share (the
 * cross-module cache, token signing) is a call to the runtime's services
 * broker (cweb_broker.c), and each module's database is a file of its own
 * (cweb_sqldb.c). Linked into every artifact together with cweb_glue.c.
 * docs/SDK-services.md is the user-facing description.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

/* ================================================================== */
/* symbols: one module per worker, so there is never another module's */
/* symbol to resolve in this process                                   */

static void *no_symbol(void *user_data, const char *module, const char *symbol)
{
    (void)user_data; (void)module; (void)symbol;
    return NULL;
}
/* The field is marked for modules' builds, not for this initialiser. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static struct symbols g_symbols = {.user_data = NULL, .resolv = no_symbol};
#pragma GCC diagnostic pop

/* ================================================================== */

/* ctx->jobs: the original's job system lives in the server; modules only
 * test it for NULL before calling jobs_create, so it is a token here. */
struct job_system {
    int unused;
};
static struct job_system g_jobs;

cweb_context_t cweb_g_ctx = {
    .cache = &cweb_g_container,
    .scheduler = &cweb_g_scheduler,
    .database = &cweb_g_sqldb,
    .crypto = &cweb_g_crypto,
    .symbols = &g_symbols,
    .jobs = &g_jobs,
};

void cweb_services_init(const char *data_dir)
{
    /* Nothing of the server's data dir is used from a worker any more. */
    (void)data_dir;
    cweb_scheduler_setup();
    cweb_broker_init();
}
