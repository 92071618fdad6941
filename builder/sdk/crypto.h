/*
 * crypto.h - c-web-modules' <crypto.h>, for modules that include it by name.
 * struct crypto and struct crypto_ops are in cweb.h.
 */
#ifndef CWEB_COMPAT_CRYPTO_H
#define CWEB_COMPAT_CRYPTO_H
#include "cweb.h"

#endif
