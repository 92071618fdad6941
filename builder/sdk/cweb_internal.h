/*
 * cweb_internal.h - private interface between the parts of the glue
 * (cweb_glue.c, cweb_services.c). Not for modules.
 */
#ifndef CWEB_INTERNAL_H
#define CWEB_INTERNAL_H

#include "cweb.h"
#include "cweb_frame.h"

/* The one context every handler, socket callback and job receives. */
extern cweb_context_t cweb_g_ctx;

/* ctx->cache and ctx->scheduler (cweb_map.c, cweb_scheduler.c). */
extern struct container cweb_g_container;
extern struct scheduler cweb_g_scheduler;
void cweb_scheduler_setup(void);

/* Called once from cweb_abi_init with the server's data directory. */
void cweb_services_init(const char *data_dir);
/* The services broker channel (cweb_broker.c): connects, learns the limits
 * and whether signing is available. */
void cweb_broker_init(void);
extern struct crypto cweb_g_crypto;
/* The module's database (cweb_sqldb.c), opened once the runtime names the
 * module's directory (cweb_abi_module_dir). */
extern struct sqldb cweb_g_sqldb;
/* Called after every handler and callback returns (a hook; nothing to do today). */
void cweb_services_after_handler(void);
/* Called before the module's unload: runs deferred work still queued
 * (cweb_scheduler.c). */
void cweb_services_retire(void);

/* Names what the calling thread runs for the module, for the crash report
 * a fatal signal writes (cweb_glue.c); (NULL, NULL) when it is done. */
void cweb_crash_context(const char *kind, const char *what);

/* The module's declaration (weak: absent when the module forgot it). */
extern module_t config __attribute__((weak));
/* Its optional documentation table (cweb.h): NULL when it defines none. */
extern const cweb_doc_t cweb_docs[] __attribute__((weak));

/* Frames other than HTTP, called by the serve loop; each answers on fd
 * using out as scratch. Return 0, or -1 to drop the connection. */
int cweb_ws_frame(int fd, uint8_t type, struct reader *r, struct buf *out);
int cweb_job_run(int fd, struct reader *r, struct buf *out);

/* The outbound channel: worker -> api frames that are not answers. */
void cweb_events_attach(int fd);
void cweb_events_detach(int fd);
int cweb_events_frame(uint8_t type, struct reader *r);
/* Sends head (a frame body without its length) followed by tail. */
int cweb_events_send(struct buf *head, const void *tail, size_t tail_len);

/* Jobs side of the channel. */
void cweb_job_cancel(const char *uuid);
void cweb_jobs_reply(uint32_t seq, int32_t rc, const char *value);

/* Answers an event frame with a bare ACK. */
int cweb_send_ack(int fd);

#endif /* CWEB_INTERNAL_H */
