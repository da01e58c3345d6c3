# cython: boundscheck=False, wraparound=False
"""One copy between two buffers, in C and without the GIL from 64 KiB on.

``dst[:] = src`` on memoryviews copies while holding the GIL, so a thread of the same process
that needs it (the GSO's digest worker, which then digests without it) waits until the copy
ends; the soft provider's RDMA Write into a peer's shared memory uses this instead.

``streaming=True`` (x86-64, from 256 KiB on) writes with non-temporal stores: the lines go to
memory without being read first and without staying in this CPU's cache, which is what a copy
into another process's memory wants (its lines may sit in another CPU's cache; a plain store
must take each line over first).
"""

from libc.stdint cimport uint8_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__)
    #include <emmintrin.h>
    #define HSP_NT 1
    #endif

    static void hsp_copy(uint8_t *dst, const uint8_t *src, size_t n, int streaming) {
    #ifdef HSP_NT
        if (streaming && n >= 262144) {
            size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
            memcpy(dst, src, head);
            dst += head; src += head; n -= head;
            while (n >= 64) {
                __m128i a = _mm_loadu_si128((const __m128i *)src);
                __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
                __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
                __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
                _mm_stream_si128((__m128i *)dst, a);
                _mm_stream_si128((__m128i *)(dst + 16), b);
                _mm_stream_si128((__m128i *)(dst + 32), c);
                _mm_stream_si128((__m128i *)(dst + 48), d);
                src += 64; dst += 64; n -= 64;
            }
            _mm_sfence();  /* the stores are visible before anything this thread does next */
        }
    #endif
        memcpy(dst, src, n);
    }
    """
    void hsp_copy(uint8_t *dst, const uint8_t *src, size_t n, int streaming) nogil

_NOGIL_BYTES = 65536  # below this, dropping and retaking the GIL costs more than it saves


def copy(uint8_t[::1] dst, const uint8_t[::1] src, bint streaming=False):
    """Copy SRC into DST (two contiguous buffers of one length; DST writable)."""
    cdef size_t n = src.shape[0]
    if <size_t>dst.shape[0] != n:
        raise ValueError(f"copy: {dst.shape[0]} bytes of destination for {n} of source")
    if n == 0:
        return
    if n >= _NOGIL_BYTES:
        with nogil:
            hsp_copy(&dst[0], &src[0], n, streaming)
    else:
        hsp_copy(&dst[0], &src[0], n, streaming)
