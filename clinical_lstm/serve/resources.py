"""Process resources of long jobs: glibc's freed memory kept for reuse between chunks (torch's thread count for a
block of work is :func:`clinical_lstm.model.network.torch_threads`)."""

from __future__ import annotations


def keep_freed_memory() -> None:
    """glibc: keep freed memory for reuse instead of returning it to the kernel after every chunk (each chunk
    allocates the same large arrays again; refaulting them cost a quarter of the job's system time). Process-wide
    and harmless elsewhere; a no-op without glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 256 << 20)
