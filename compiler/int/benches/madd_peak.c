/*
 * Peak multiply-add throughput of the AVX2 instruction sequences an integer
 * conv kernel can use, one thread, registers only (no memory traffic): the
 * ceiling for `direct_kernel` / `madd_kernel` in compiler/int/src/engine.
 * Not part of the build (cargo discovers only .rs benches):
 *
 *   gcc -O3 -mavx2 compiler/int/benches/madd_peak.c -o /tmp/madd_peak && /tmp/madd_peak
 *
 * Eight independent accumulators per loop (as the kernels keep), results in
 * multiply-accumulates (MAC) per nanosecond of thread CPU time:
 * - vpmaddwd + vpaddd: i16 x i16 pairs into i32 (what the engine runs);
 * - vpmaddubsw + vpmaddwd(ones) + vpaddd: u8 x s8, the i16 pair sums
 *   widened to i32 at once (exact where no pair sum saturates);
 * - vpmaddubsw + vpaddw: u8 x s8 summed in i16 (exact only where every
 *   partial sum of the chain stays inside i16: not so for 8-bit operands).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 100000000L

int main(int argc, char **argv) {
    (void)argv;
    __m256i a[8], w[8], x = _mm256_set1_epi16(argc), ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 8; i++) {
        a[i] = _mm256_set1_epi32(i);
        w[i] = _mm256_set1_epi16(i + argc);
    }
    for (int rep = 0; rep < 2; rep++) {
        double t0 = now();
        for (long i = 0; i < N / 8; i++) {
            _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
                a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(x, w[r]));
            x = _mm256_xor_si256(x, ones);
        }
        double t1 = now();
        printf("vpmaddwd + vpaddd (i16 x i16):             %.1f MAC/ns\n", N * 16 / (t1 - t0) / 1e9);
        t0 = now();
        for (long i = 0; i < N / 8; i++) {
            _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
                a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[r]), ones));
            x = _mm256_xor_si256(x, ones);
        }
        t1 = now();
        printf("vpmaddubsw + vpmaddwd(1) + vpaddd (u8 x s8): %.1f MAC/ns\n", N * 32 / (t1 - t0) / 1e9);
        t0 = now();
        for (long i = 0; i < N / 8; i++) {
            _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)
                a[r] = _mm256_add_epi16(a[r], _mm256_maddubs_epi16(x, w[r]));
            x = _mm256_xor_si256(x, ones);
        }
        t1 = now();
        printf("vpmaddubsw + vpaddw (i16 sums, inexact):     %.1f MAC/ns\n", N * 32 / (t1 - t0) / 1e9);
    }
    int s = 0;
    for (int r = 0; r < 8; r++)
        s += _mm256_extract_epi32(a[r], 0) + _mm256_extract_epi32(x, 1);
    printf("(checksum %d)\n", s);
    return 0;
}
