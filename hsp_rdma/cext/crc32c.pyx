# cython: boundscheck=False, wraparound=False
"""CRC32C (Castagnoli) in C: SSE4.2 ``crc32`` instructions when the CPU has them (three chains
interleaved, then joined), slice-by-8 tables otherwise. Same value as the pure-Python reference
in ``hsp_rdma.core.frames``; buffers of 16 KiB and more are summed without the GIL, so another
thread (the node's loop) keeps running.
"""

from libc.stdint cimport uint8_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) || defined(__i386__)
    #include <nmmintrin.h>
    #define HSP_X86 1
    #endif

    #define HSP_LONG 8192
    #define HSP_SHORT 256
    static uint32_t hsp_crc_table[8][256];
    static uint32_t hsp_shift_long[4][256];
    static uint32_t hsp_shift_short[4][256];
    static void hsp_zeros_tables(uint32_t zeros[4][256], size_t len);
    static int hsp_crc_hw = 0;

    static void hsp_crc_init(void) {
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t crc = n;
            for (int k = 0; k < 8; k++)
                crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
            hsp_crc_table[0][n] = crc;
        }
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t crc = hsp_crc_table[0][n];
            for (int k = 1; k < 8; k++) {
                crc = hsp_crc_table[0][crc & 0xff] ^ (crc >> 8);
                hsp_crc_table[k][n] = crc;
            }
        }
        hsp_zeros_tables(hsp_shift_long, HSP_LONG);
        hsp_zeros_tables(hsp_shift_short, HSP_SHORT);
    #ifdef HSP_X86
        __builtin_cpu_init();
        hsp_crc_hw = __builtin_cpu_supports("sse4.2");
    #endif
    }

    static uint32_t hsp_crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t)p & 7)) {
            crc = hsp_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
            n--;
        }
        while (n >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            /* little-endian hosts only: x86 and the arm64 we may meet; big-endian falls to bytes */
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
            crc = hsp_crc_table[7][lo & 0xff] ^ hsp_crc_table[6][(lo >> 8) & 0xff] ^
                  hsp_crc_table[5][(lo >> 16) & 0xff] ^ hsp_crc_table[4][lo >> 24] ^
                  hsp_crc_table[3][hi & 0xff] ^ hsp_crc_table[2][(hi >> 8) & 0xff] ^
                  hsp_crc_table[1][(hi >> 16) & 0xff] ^ hsp_crc_table[0][hi >> 24];
            p += 8;
            n -= 8;
    #else
            break;
    #endif
        }
        while (n--)
            crc = hsp_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return crc;
    }

    /* The hardware path runs three independent crc32 chains over three adjacent blocks (the
       instruction's latency is three cycles, its throughput one a cycle: one chain leaves two
       thirds of the unit idle) and joins them by shifting a chain's register over the next
       block's length of zeros (a 32x32 GF(2) operator, applied with four byte tables), as Mark
       Adler's crc32c.c does (zlib licence). Blocks of HSP_LONG bytes, then HSP_SHORT, then one
       chain for the rest. */

    static uint32_t hsp_gf2_times(const uint32_t *mat, uint32_t vec) {
        uint32_t sum = 0;
        while (vec) {
            if (vec & 1)
                sum ^= *mat;
            vec >>= 1;
            mat++;
        }
        return sum;
    }

    static void hsp_gf2_square(uint32_t *square, const uint32_t *mat) {
        for (int n = 0; n < 32; n++)
            square[n] = hsp_gf2_times(mat, mat[n]);
    }

    /* the operator that appends LEN zero bytes (LEN a power of two) to a raw crc register */
    static void hsp_zeros_op(uint32_t *even, size_t len) {
        uint32_t odd[32], row = 1;
        odd[0] = 0x82F63B78u;  /* one zero bit */
        for (int n = 1; n < 32; n++) {
            odd[n] = row;
            row <<= 1;
        }
        hsp_gf2_square(even, odd);  /* two bits */
        hsp_gf2_square(odd, even);  /* four bits */
        do {
            hsp_gf2_square(even, odd);  /* one byte, then 4, 16, ... */
            len >>= 1;
            if (len == 0)
                return;
            hsp_gf2_square(odd, even);
            len >>= 1;
        } while (len);
        memcpy(even, odd, sizeof(odd));
    }

    static void hsp_zeros_tables(uint32_t zeros[4][256], size_t len) {
        uint32_t op[32];
        hsp_zeros_op(op, len);
        for (uint32_t n = 0; n < 256; n++) {
            zeros[0][n] = hsp_gf2_times(op, n);
            zeros[1][n] = hsp_gf2_times(op, n << 8);
            zeros[2][n] = hsp_gf2_times(op, n << 16);
            zeros[3][n] = hsp_gf2_times(op, n << 24);
        }
    }

    static inline uint32_t hsp_shift(uint32_t zeros[4][256], uint32_t crc) {
        return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^
               zeros[2][(crc >> 16) & 0xff] ^ zeros[3][crc >> 24];
    }

    #ifdef HSP_X86
    #ifdef __x86_64__
    /* the three chains over every 3 * BLOCK bytes at *P, joined into C0 */
    __attribute__((target("sse4.2")))
    static inline __attribute__((always_inline))
    uint64_t hsp_crc_3way(uint64_t c0, const uint8_t **pp, size_t *np, const size_t block,
                          uint32_t zeros[4][256]) {
        const uint8_t *p = *pp;
        size_t n = *np;
        while (n >= 3 * block) {
            uint64_t c1 = 0, c2 = 0, w0, w1, w2;
            const uint8_t *end = p + block;
            do {
                memcpy(&w0, p, 8);
                memcpy(&w1, p + block, 8);
                memcpy(&w2, p + 2 * block, 8);
                c0 = _mm_crc32_u64(c0, w0);
                c1 = _mm_crc32_u64(c1, w1);
                c2 = _mm_crc32_u64(c2, w2);
                p += 8;
            } while (p < end);
            c0 = hsp_shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
            c0 = hsp_shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
            p += 2 * block;
            n -= 3 * block;
        }
        *pp = p;
        *np = n;
        return c0;
    }
    #endif

    __attribute__((target("sse4.2")))
    static uint32_t hsp_crc_hw_run(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t)p & 7)) {
            crc = _mm_crc32_u8(crc, *p++);
            n--;
        }
    #ifdef __x86_64__
        uint64_t c0 = crc, w0;
        c0 = hsp_crc_3way(c0, &p, &n, HSP_LONG, hsp_shift_long);
        c0 = hsp_crc_3way(c0, &p, &n, HSP_SHORT, hsp_shift_short);
        while (n >= 8) {
            memcpy(&w0, p, 8);
            c0 = _mm_crc32_u64(c0, w0);
            p += 8;
            n -= 8;
        }
        crc = (uint32_t)c0;
    #endif
        while (n--)
            crc = _mm_crc32_u8(crc, *p++);
        return crc;
    }
    #endif

    static uint32_t hsp_crc32c(uint32_t crc, const uint8_t *p, size_t n, int use_hw) {
        crc = ~crc;
    #ifdef HSP_X86
        if (use_hw && hsp_crc_hw)
            return ~hsp_crc_hw_run(crc, p, n);
    #endif
        return ~hsp_crc_sw(crc, p, n);
    }
    """
    void hsp_crc_init()
    int hsp_crc_hw
    uint32_t hsp_crc32c(uint32_t crc, const uint8_t *p, size_t n, int use_hw) nogil

hsp_crc_init()

HARDWARE = bool(hsp_crc_hw)  # True: the CPU's SSE4.2 crc32 instruction does the work
_NOGIL_BYTES = 16384  # below this, dropping and retaking the GIL costs more than it saves


def crc32c(data, unsigned int crc=0, bint hardware=True):
    """CRC32C of ``data`` (any contiguous buffer), continuing from ``crc``.

    ``hardware=False`` forces the slice-by-8 table path (for tests on a CPU with SSE4.2).
    """
    cdef const uint8_t[::1] view
    cdef size_t n
    cdef uint32_t c = crc
    if isinstance(data, memoryview) and not data.c_contiguous:
        data = data.tobytes()
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    n = view.shape[0]
    if n == 0:
        return c
    if n >= _NOGIL_BYTES:
        with nogil:
            c = hsp_crc32c(c, &view[0], n, hardware)
    else:
        c = hsp_crc32c(c, &view[0], n, hardware)
    return c
