/*
 * baseline.c - the benchmark kernels as a plain shared library, for the
 * FastAPI baseline (bench/baseline_app.py) to call through ctypes.
 *
 * Built by bench/run.py with: gcc -O2 -shared -fPIC baseline.c -lcrypto.
 * The kernels are the same as bench/modules/workloads.c's routes, so the
 * baseline and cweb do identical C work per request.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>

#define SHA_INPUT_BYTES (64 * 1024)
#define BIG_BODY_BYTES (1024 * 1024)

static unsigned char sha_input[SHA_INPUT_BYTES];
static unsigned char big_body[BIG_BODY_BYTES];
static uint64_t compute_iters = 1000000ULL;

/* Same kernel as workloads.c: xorshift64, a dependent chain the compiler
 * cannot fold or vectorise. */
static uint64_t spin(uint64_t n)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static void fill_pattern(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)('a' + (i * 31 + 7) % 26);
}

__attribute__((constructor)) static void init(void)
{
    fill_pattern(sha_input, sizeof sha_input);
    fill_pattern(big_body, sizeof big_body);
}

/* Runs the compute kernel n times and returns its result (calibration). */
uint64_t bl_spin(uint64_t n)
{
    return spin(n);
}

/* Sets the iteration count of bl_compute (the calibrated ~1 ms). */
void bl_configure(uint64_t iters)
{
    compute_iters = iters;
}

/* Writes "ok" into out; returns its length. */
int bl_trivial(char *out, int cap)
{
    if (cap < 3)
        return -1;
    memcpy(out, "ok", 3);
    return 2;
}

/* Writes the hex SHA-256 of the fixed 64 KiB buffer into out (>= 65 bytes). */
int bl_sha256(char *out, int cap)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (cap < 2 * EVP_MAX_MD_SIZE + 1)
        return -1;
    if (!EVP_Digest(sha_input, sizeof sha_input, digest, &len, EVP_sha256(), NULL))
        return -1;
    for (unsigned int i = 0; i < len; i++) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 15];
    }
    out[2 * len] = '\0';
    return (int)(2 * len);
}

/* Runs the ~1 ms loop; writes its result in hex into out. */
int bl_compute(char *out, int cap)
{
    return snprintf(out, (size_t)cap, "%016llx", (unsigned long long)spin(compute_iters));
}

/* The size of the body bl_big writes. */
int bl_big_size(void)
{
    return BIG_BODY_BYTES;
}

/* Fills out with the 1 MiB body; returns its length. */
int bl_big(char *out, int cap)
{
    if (cap < BIG_BODY_BYTES)
        return -1;
    memcpy(out, big_body, sizeof big_body);
    return BIG_BODY_BYTES;
}

/* Consumes a request body; returns its length. */
long bl_upload(const char *body, long len)
{
    (void)body;
    return len;
}
