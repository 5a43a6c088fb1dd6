//! What arrives from the peer: a datagram's records sorted by the association's state (during
//! the handshake to OpenSSL, established on the record fast path to the opener, otherwise
//! through OpenSSL's record layer), and the plaintext OpenSSL returns.

use std::time::Duration;

use openssl::ssl::ErrorCode;

use super::{
    DtlsAssociation, MAX_FINISHED_CANDIDATES, MAX_PAYLOAD, Received, State, safe_for_openssl,
};
use crate::RecordSuite;
use crate::error::{CloseReason, DtlsError};
use crate::record::{self, CT_ALERT, CT_APPLICATION_DATA, CT_HANDSHAKE, next_record};

impl DtlsAssociation {
    /// Processes one received UDP datagram of this peer (it may carry several records).
    ///
    /// Application records are opened in place; the returned ranges index `datagram`.
    /// Malformed, replayed and unauthentic records are counted in [`Self::stats`] and dropped.
    /// Returns an error if the association was already closed or the handshake failed now
    /// (alerts may still be waiting in [`Self::poll_transmit`]).
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        datagram: &mut [u8],
    ) -> Result<Received, DtlsError> {
        let mut received = Received::new();
        self.now = self.now.max(now);
        match &self.state {
            State::Closed(reason) => return Err(DtlsError::Closed(reason.clone())),
            State::Handshaking => {
                self.handle_handshaking(now, datagram, &mut received);
                if let State::Closed(CloseReason::HandshakeFailed(why)) = &self.state {
                    return Err(DtlsError::HandshakeFailed(why.clone()));
                }
            }
            State::Established if self.fast.is_some() => {
                self.handle_fast(now, datagram, &mut received);
            }
            State::Established => self.handle_fallback(now, datagram, &mut received),
        }
        Ok(received)
    }

    fn handle_handshaking(&mut self, now: Duration, datagram: &mut [u8], received: &mut Received) {
        // Once the hello flights chose a suite, its own shortest record is the bound (AES-GCM's
        // is longer than ChaCha20's, the configured minimum when both are offered).
        let min_sealed_body = crate::ffi::pending_cipher_id(self.stream.ssl())
            .and_then(RecordSuite::from_cipher_id)
            .map_or(self.config.min_sealed_body, |s| {
                s.overhead() - record::RECORD_HEADER_LEN
            });
        let mut to_ssl = self.stream.get_mut().buffer();
        let mut pos = 0;
        loop {
            let (h, r) = match next_record(datagram, pos) {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(_) => {
                    self.stats.malformed += 1;
                    break;
                }
            };
            pos = r.end;
            if !safe_for_openssl(&h, min_sealed_body) {
                self.stats.malformed += 1;
                continue;
            }
            if h.ctype == CT_APPLICATION_DATA && self.config.fast_path {
                // We cannot authenticate it before our handshake completes; treat it as lost.
                self.stats.early_app_data_dropped += 1;
                continue;
            }
            if h.ctype == CT_HANDSHAKE
                && h.epoch >= 1
                && self.capture.peer_finished.len() < MAX_FINISHED_CANDIDATES
            {
                self.capture
                    .peer_finished
                    .push(datagram[r.clone()].to_vec());
            }
            to_ssl.extend_from_slice(&datagram[r]);
        }
        if to_ssl.is_empty() {
            self.stream.get_mut().recycle(to_ssl);
            return;
        }
        self.stream.get_mut().inbound.push_back(to_ssl);
        self.drive_handshake(now);
        if self.state == State::Established {
            // Deliver what OpenSSL buffered for the new epoch (fallback path only) and let it
            // process anything else that came with the final flight.
            self.pump_ssl_read(Some((datagram, received)));
            self.drain_output();
            self.refresh_timer(now);
        }
    }

    fn handle_fallback(&mut self, now: Duration, datagram: &mut [u8], received: &mut Received) {
        let min_sealed_body = self.suite.map_or(self.config.min_sealed_body, |s| {
            s.overhead() - record::RECORD_HEADER_LEN
        });
        let mut to_ssl = self.stream.get_mut().buffer();
        let mut pos = 0;
        loop {
            match next_record(datagram, pos) {
                Ok(Some((h, r))) => {
                    pos = r.end;
                    if safe_for_openssl(&h, min_sealed_body) {
                        to_ssl.extend_from_slice(&datagram[r]);
                    } else {
                        self.stats.malformed += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.stats.malformed += 1;
                    break;
                }
            }
        }
        if to_ssl.is_empty() {
            self.stream.get_mut().recycle(to_ssl);
            return;
        }
        self.stream.get_mut().inbound.push_back(to_ssl);
        self.pump_ssl_read(Some((datagram, received)));
        self.drain_output();
        self.refresh_timer(now);
    }

    fn handle_fast(&mut self, now: Duration, datagram: &mut [u8], received: &mut Received) {
        let Some(fp) = self.fast.as_mut() else {
            return;
        };
        let (for_association, closed, advanced) = match fp.rx.as_mut() {
            Some(opener) => {
                let opened = opener.open(now, datagram);
                for r in opened.data.iter() {
                    received.push(r);
                }
                (opened.for_association, opened.closed, opened.advanced)
            }
            // A worker opens this association's records: what reaches us is what it left.
            None => (self.unowned_records(datagram), None, false),
        };
        if advanced {
            self.fill_rx_lookahead();
        }
        if let Some(reason) = closed {
            self.fail(reason);
            return;
        }
        if for_association.is_empty() {
            return;
        }
        // Rule 2: handshake, CCS and other epochs go to OpenSSL.
        let mut to_ssl = self.stream.get_mut().buffer();
        for r in for_association.iter() {
            to_ssl.extend_from_slice(&datagram[r]);
        }
        self.stream.get_mut().inbound.push_back(to_ssl);
        self.pump_ssl_read(None);
        self.drain_output();
        self.refresh_timer(now);
    }

    /// Sorts the records of a datagram while another thread holds the opener: protected
    /// application records and alerts are of an epoch that thread had no key for; the rest
    /// (handshake, CCS) goes to OpenSSL.
    fn unowned_records(&mut self, datagram: &[u8]) -> Received {
        let min_sealed_body = self
            .fast
            .as_ref()
            .map_or(self.config.min_sealed_body, |fp| fp.min_sealed_body);
        let mut out = Received::new();
        let mut pos = 0;
        loop {
            let (h, r) = match next_record(datagram, pos) {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(_) => {
                    self.stats.malformed += 1;
                    break;
                }
            };
            pos = r.end;
            let record_layer = h.ctype == CT_APPLICATION_DATA || h.ctype == CT_ALERT;
            if record_layer && h.epoch >= 1 {
                self.stats.unknown_epoch += 1;
            } else if !safe_for_openssl(&h, min_sealed_body) {
                self.stats.malformed += 1;
            } else {
                out.push(r);
            }
        }
        out
    }

    /// Lets OpenSSL process queued records after the handshake; plaintext it returns (fallback
    /// path) is copied into `out`'s buffer from offset 0 on.
    fn pump_ssl_read(&mut self, mut out: Option<(&mut [u8], &mut Received)>) {
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; MAX_PAYLOAD + 2048];
        }
        let mut cursor = 0;
        loop {
            let queued = self.stream.get_ref().inbound.len();
            match self.stream.ssl_read(&mut self.scratch) {
                Ok(0) => break,
                Ok(n) => {
                    let fits = out.as_ref().is_some_and(|(buf, _)| cursor + n <= buf.len());
                    match out.as_mut() {
                        Some((buf, rec)) if fits && self.fast.is_none() => {
                            buf[cursor..cursor + n].copy_from_slice(&self.scratch[..n]);
                            rec.push(cursor..cursor + n);
                            cursor += n;
                            self.stats.records_opened += 1;
                        }
                        _ => self.stats.fallback_dropped += 1,
                    }
                }
                // OpenSSL 3.0 returns -1 without an error for some records it drops (e.g. an
                // AEAD record shorter than nonce + tag). Our BIO cannot fail, so this is a
                // dropped record, not a failure; go on while OpenSSL consumes datagrams.
                Err(e)
                    if e.code() == ErrorCode::SYSCALL
                        && e.ssl_error().is_none()
                        && e.io_error().is_none() =>
                {
                    self.stats.malformed += 1;
                    let left = self.stream.get_ref().inbound.len();
                    if left == 0 || left >= queued {
                        break;
                    }
                }
                Err(e) => {
                    match e.code() {
                        ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => {}
                        ErrorCode::ZERO_RETURN => self.fail(CloseReason::PeerClosed),
                        _ => self.fail(CloseReason::ProtocolError(e.to_string())),
                    }
                    break;
                }
            }
        }
        // Never let unread datagrams pile up behind a record OpenSSL refused.
        let bio = self.stream.get_mut();
        while let Some(d) = bio.inbound.pop_front() {
            self.stats.malformed += 1;
            bio.recycle(d);
        }
    }
}
