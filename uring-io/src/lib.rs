//! Batched packet I/O on io_uring.
