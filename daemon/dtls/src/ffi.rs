//! The few OpenSSL entry points the `openssl` crate does not expose, each wrapped safely.

use std::ffi::{CString, c_int, c_long, c_uint, c_void};
use std::sync::OnceLock;
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder, SslRef};
use openssl_sys as sys;

/// `DTLS_CTRL_GET_TIMEOUT` (the `DTLSv1_get_timeout` macro).
const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
/// `DTLS_CTRL_HANDLE_TIMEOUT` (the `DTLSv1_handle_timeout` macro).
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

/// OpenSSL's opaque `BIO_ADDR` (not exported by openssl-sys for OpenSSL 3).
#[repr(C)]
pub(crate) struct BioAddr {
    _opaque: [u8; 0],
}

unsafe extern "C" {
    fn DTLSv1_listen(s: *mut sys::SSL, client: *mut BioAddr) -> c_int;
    fn BIO_ADDR_new() -> *mut BioAddr;
    fn BIO_ADDR_free(a: *mut BioAddr);
    fn DTLS_set_timer_cb(
        s: *mut sys::SSL,
        cb: Option<unsafe extern "C" fn(*mut sys::SSL, c_uint) -> c_uint>,
    );
    fn SSL_get_pending_cipher(s: *const sys::SSL) -> *const sys::SSL_CIPHER;
    fn SSL_CIPHER_get_protocol_id(c: *const sys::SSL_CIPHER) -> u16;
    fn SSL_CTX_use_psk_identity_hint(
        ctx: *mut sys::SSL_CTX,
        hint: *const std::ffi::c_char,
    ) -> c_int;
}

/// Returns OpenSSL's remaining time until the DTLS retransmission timer fires, if one runs.
pub(crate) fn dtls_get_timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object; DTLS_CTRL_GET_TIMEOUT writes one `struct timeval`
    // through `parg`, which points to a properly aligned local `libc::timeval` (the C type).
    let ret = unsafe {
        sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&raw mut tv).cast::<c_void>(),
        )
    };
    if ret <= 0 {
        return None;
    }
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Some(Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)))
}

/// Lets OpenSSL retransmit the last flight if its timer expired; returns OpenSSL's result
/// (1 retransmitted, 0 nothing to do, negative on failure such as the retransmission limit).
pub(crate) fn dtls_handle_timeout(ssl: &SslRef) -> c_long {
    // SAFETY: `ssl` is a live SSL object; DTLS_CTRL_HANDLE_TIMEOUT takes no argument pointer.
    unsafe {
        sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        )
    }
}

/// Outcome of [`dtls_listen`].
pub(crate) enum ListenResult {
    /// The ClientHello carried a valid cookie; the SSL object holds it for the handshake.
    Accepted,
    /// No valid cookie (a HelloVerifyRequest may have been written) or not a ClientHello.
    NotYet,
    /// OpenSSL reported an error.
    Error,
}

/// Runs OpenSSL's stateless `DTLSv1_listen` over the SSL object's BIOs.
pub(crate) fn dtls_listen(ssl: &SslRef) -> ListenResult {
    // SAFETY: BIO_ADDR_new returns an owned, zeroed BIO_ADDR or NULL.
    let addr = unsafe { BIO_ADDR_new() };
    if addr.is_null() {
        return ListenResult::Error;
    }
    // SAFETY: `ssl` is a live SSL object with both BIOs set (SslStream::new did that);
    // `addr` is a valid BIO_ADDR that DTLSv1_listen may write or clear.
    let ret = unsafe { DTLSv1_listen(ssl.as_ptr(), addr) };
    // SAFETY: `addr` came from BIO_ADDR_new and is freed exactly once; OpenSSL keeps no reference.
    unsafe { BIO_ADDR_free(addr) };
    match ret {
        1.. => ListenResult::Accepted,
        0 => ListenResult::NotYet,
        _ => ListenResult::Error,
    }
}

/// Per-SSL retransmission timer policy, read by [`timer_cb`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerPolicy {
    pub initial_us: u32,
    pub max_us: u32,
}

fn timer_index() -> Option<Index<Ssl, TimerPolicy>> {
    static INDEX: OnceLock<Option<Index<Ssl, TimerPolicy>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// OpenSSL's DTLS timer callback: `timer_us` is 0 for a fresh timer, else the previous value.
unsafe extern "C" fn timer_cb(ssl: *mut sys::SSL, timer_us: c_uint) -> c_uint {
    // SAFETY: OpenSSL calls this with the live SSL object the callback was installed on.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let policy = timer_index()
        .and_then(|i| ssl.ex_data(i).copied())
        .unwrap_or(TimerPolicy {
            initial_us: 1_000_000,
            max_us: 60_000_000,
        });
    if timer_us == 0 {
        policy.initial_us
    } else {
        timer_us.saturating_mul(2).min(policy.max_us)
    }
}

/// Installs the retransmission timer policy on `ssl`.
pub(crate) fn set_timer_policy(ssl: &mut SslRef, policy: TimerPolicy) -> Result<(), ErrorStack> {
    let index = timer_index().ok_or_else(ErrorStack::get)?;
    ssl.set_ex_data(index, policy);
    // SAFETY: `ssl` is a live SSL object and `timer_cb` matches `DTLS_timer_cb`
    // (`unsigned int (*)(SSL *, unsigned int)`); it never unwinds.
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(timer_cb)) };
    Ok(())
}

/// Sets the PSK identity hint a server sends in ServerKeyExchange.
pub(crate) fn set_psk_identity_hint(
    ctx: &mut SslContextBuilder,
    hint: &str,
) -> Result<(), ErrorStack> {
    let hint = CString::new(hint).map_err(|_| ErrorStack::get())?;
    // SAFETY: `ctx` is a live SSL_CTX being built; OpenSSL copies the NUL-terminated string.
    let ret = unsafe { SSL_CTX_use_psk_identity_hint(ctx.as_ptr(), hint.as_ptr()) };
    if ret == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Lets OpenSSL pick the DHE group of a server by the negotiated suite
/// (`SSL_CTX_set_dh_auto`): 2048 bits for the DHE-PSK suite.
pub(crate) fn set_dh_auto(ctx: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    // SAFETY: `ctx` is a live SSL_CTX being built; SSL_CTRL_SET_DH_AUTO takes no pointer.
    let ret = unsafe { sys::SSL_CTX_set_dh_auto(ctx.as_ptr(), 1) };
    if ret == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Sets the cipher list of one SSL object (`SSL_set_cipher_list`); the `openssl` crate offers
/// it only on a `&mut SslRef`, which an `SslStream` does not lend.
pub(crate) fn set_ssl_cipher_list(ssl: &SslRef, list: &str) -> Result<(), ErrorStack> {
    let list = CString::new(list).map_err(|_| ErrorStack::get())?;
    // SAFETY: `ssl` is a live SSL object that its stream owns alone; nothing else uses it
    // during this call (the caller holds the stream by value). OpenSSL copies the string.
    let ret = unsafe { sys::SSL_set_cipher_list(ssl.as_ptr(), list.as_ptr()) };
    if ret == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Returns the two-byte id of the cipher suite the running handshake chose
/// (`SSL_get_pending_cipher`: known from the ServerHello on; `current_cipher` is not set
/// until the handshake completes), if any.
pub(crate) fn pending_cipher_id(ssl: &SslRef) -> Option<[u8; 2]> {
    // SAFETY: `ssl` is a live SSL object; the call only reads it and returns a pointer to a
    // static cipher description or null.
    let cipher = unsafe { SSL_get_pending_cipher(ssl.as_ptr()) };
    if cipher.is_null() {
        return None;
    }
    // SAFETY: `cipher` is a non-null pointer OpenSSL returned to one of its static cipher
    // descriptions, valid for the life of the library.
    Some(unsafe { SSL_CIPHER_get_protocol_id(cipher) }.to_be_bytes())
}

/// Cookie binding of a server-side SSL object: peer address bytes and time bucket.
#[derive(Clone, Debug)]
pub(crate) struct CookieBinding {
    pub peer: [u8; 18],
    pub bucket: u64,
}

/// Returns the ex-data index that carries the [`CookieBinding`].
pub(crate) fn cookie_index() -> Result<Index<Ssl, CookieBinding>, ErrorStack> {
    static INDEX: OnceLock<Option<Index<Ssl, CookieBinding>>> = OnceLock::new();
    INDEX
        .get_or_init(|| Ssl::new_ex_index().ok())
        .ok_or_else(ErrorStack::get)
}
