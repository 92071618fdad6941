/*
 * queue.h - c-web-modules' <queue.h>, for modules that include it by name.
 * A bounded blocking queue of the original's server.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_QUEUE_H
#define CWEB_COMPAT_QUEUE_H
#include "cweb.h"

int queue_create() CWEB_UNAVAILABLE("queue_create: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_destroy() CWEB_UNAVAILABLE("queue_destroy: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_enqueue() CWEB_UNAVAILABLE("queue_enqueue: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_try_enqueue() CWEB_UNAVAILABLE("queue_try_enqueue: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_dequeue() CWEB_UNAVAILABLE("queue_dequeue: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_try_dequeue() CWEB_UNAVAILABLE("queue_try_dequeue: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int queue_size() CWEB_UNAVAILABLE("queue_size: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");

#endif
