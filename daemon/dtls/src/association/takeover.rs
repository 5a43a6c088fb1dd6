//! The record takeover: once OpenSSL finished the handshake, derive the traffic keys, prove
//! them on the Finished messages already on the wire, and from then on seal and open records
//! in place; whatever OpenSSL still writes is re-sealed with the fast path's sequence numbers.

use super::*;

impl DtlsAssociation {
    pub(super) fn on_handshake_complete(&mut self, now: Duration) {
        let ssl = self.stream.ssl();
        let suite = ssl
            .current_cipher()
            .and_then(|c| RecordSuite::from_cipher_id(c.protocol_id()));
        let Some(suite) = suite else {
            self.fail(CloseReason::ProtocolError(
                "negotiated cipher has no known record layout".into(),
            ));
            return;
        };
        if ssl.version2() != Some(SslVersion::DTLS1_2) {
            self.fail(CloseReason::ProtocolError("not DTLS 1.2".into()));
            return;
        }
        self.suite = Some(suite);
        self.state = State::Established;
        self.established_at = Some(now);
        if self.config.fast_path {
            match self.take_over(suite, now) {
                Some(fp) => {
                    self.rx_counts = Some(fp.rx_shared.clone());
                    self.fast = Some(fp);
                    self.fill_rx_lookahead();
                    self.tx_upkeep(now);
                }
                None => self.stats.self_test_failed = true,
            }
        }
        self.capture = Capture::default();
    }

    /// Rule 1: derives the keys from public API and proves them on both Finished records.
    pub(super) fn take_over(&self, suite: RecordSuite, now: Duration) -> Option<FastPath> {
        let ssl = self.stream.ssl();
        let session = ssl.session()?;
        let mut master = Zeroizing::new([0u8; 48]);
        if session.master_key(&mut master[..]) != 48 {
            return None;
        }
        let (mut cr, mut sr) = ([0u8; 32], [0u8; 32]);
        if ssl.client_random(&mut cr) != 32 || ssl.server_random(&mut sr) != 32 {
            return None;
        }
        let keys = derive_keys(suite, &master[..], &cr, &sr).ok()?;
        let (tx, rx) = match self.role {
            Role::Client => (keys.client_write, keys.server_write),
            Role::Server => (keys.server_write, keys.client_write),
        };
        // Self-test 1: our own Finished opens with our write key.
        let mut own = self.capture.own_finished.clone()?;
        let (oh, _) = next_record(&own, 0).ok()??;
        let pt = tx.open(oh.epoch_seq(), oh.ctype, &mut own)?;
        if !is_finished(&own[pt]) {
            return None;
        }
        // Self-test 2: the peer's Finished opens with the peer's write key.
        let mut window = ReplayWindow::new();
        let mut rx_epoch = None;
        for candidate in &self.capture.peer_finished {
            let mut rec = candidate.clone();
            let Ok(Some((h, _))) = next_record(&rec, 0) else {
                continue;
            };
            if let Some(pt) = rx.open(h.epoch_seq(), h.ctype, &mut rec)
                && is_finished(&rec[pt])
            {
                window.update(h.seq);
                rx_epoch = Some(h.epoch);
            }
        }
        let rx_epoch = rx_epoch?;
        let rx_shared = Arc::new(RxShared::new(suite, rx_epoch));
        Some(FastPath {
            rx: Some(Opener::new(
                rx_shared.clone(),
                EpochKey::new(rx_epoch, rx),
                window,
            )),
            rx_shared,
            rx_stuck: false,
            tx: TxKeys::new(
                tx,
                oh.epoch,
                self.capture.own_max_seq? + 1,
                &self.config.rekey,
                now,
            ),
            min_sealed_body: suite.overhead() - record::RECORD_HEADER_LEN,
        })
    }

    /// Moves what OpenSSL wrote to the transmit queue; after takeover, re-seals it (rule 3).
    pub(super) fn drain_output(&mut self) {
        while let Some(d) = self.stream.get_mut().outbound.pop_front() {
            if self.fast.is_some() {
                let out = self.reseal(&d);
                self.stream.get_mut().recycle(d);
                if !out.is_empty() {
                    self.transmit.push_back(out);
                }
                continue;
            }
            if self.state == State::Handshaking {
                self.scan_own(&d);
            }
            self.transmit.push_back(d);
        }
    }

    /// Records our Finished and the highest sequence number OpenSSL used in the new epoch.
    pub(super) fn scan_own(&mut self, d: &[u8]) {
        let mut pos = 0;
        while let Ok(Some((h, r))) = next_record(d, pos) {
            pos = r.end;
            if h.epoch == 0 {
                continue;
            }
            if self.capture.own_finished.is_none() && h.ctype == CT_HANDSHAKE {
                self.capture.own_finished = Some(d[r].to_vec());
            }
            let own_epoch = self
                .capture
                .own_finished
                .as_deref()
                .and_then(|f| next_record(f, 0).ok().flatten())
                .map(|(oh, _)| oh.epoch);
            if own_epoch == Some(h.epoch) {
                let max = self.capture.own_max_seq.map_or(h.seq, |m| m.max(h.seq));
                self.capture.own_max_seq = Some(max);
            }
        }
    }

    /// Re-seals every record OpenSSL wrote in the taken-over epoch with our next sequence number.
    pub(super) fn reseal(&mut self, d: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(d.len());
        let Some(fp) = self.fast.as_mut() else {
            return out;
        };
        let mut pos = 0;
        while let Ok(Some((h, r))) = next_record(d, pos) {
            pos = r.end;
            let start = out.len();
            out.extend_from_slice(&d[r]);
            if h.epoch != fp.tx.handshake_epoch {
                continue;
            }
            let rec = &mut out[start..];
            let Some(pt) = fp.tx.handshake_key().open(h.epoch_seq(), h.ctype, rec) else {
                out.truncate(start);
                continue;
            };
            let len = pt.len();
            let sealed = fp
                .tx
                .sealer
                .reserve(1)
                .and_then(|r| r.seal_as(0, h.ctype, rec, len));
            if sealed.is_err() {
                out.truncate(start);
                continue;
            }
            self.stats.resealed += 1;
        }
        out
    }

    /// Follows the sending direction's shared state: counts switches a sealer (or the clock)
    /// made, dates the new epoch, and derives and publishes the next epoch's key ahead, so a
    /// sealer that reaches the record limit can switch at once.
    pub(super) fn tx_upkeep(&mut self, now: Duration) {
        let (Some(fp), Some(suite)) = (self.fast.as_mut(), self.suite) else {
            return;
        };
        self.stats.tx_rekeys += fp.tx.follow(now);
        if fp.tx.stuck || !TxKeys::rekeys(&self.config.rekey) || fp.tx.shared.has_next() {
            return;
        }
        let keys = fp.tx.epoch.checked_add(1).and_then(|e| {
            Some((
                e,
                rekey::epoch_keys(self.stream.ssl(), suite, self.role, e)?,
            ))
        });
        match keys {
            Some((epoch, (tx, _))) => {
                fp.tx
                    .shared
                    .publish_next(crate::sealer::EpochKey::new(epoch, tx));
            }
            None => {
                fp.tx.stuck = true;
                fp.tx.shared.set_stuck();
                self.stats.rekey_failed += 1;
            }
        }
    }

    /// Derives the receive keys of the epochs after the opener's current one (see
    /// `rekey::LOOKAHEAD`) and publishes them to it, wherever it runs.
    pub(super) fn fill_rx_lookahead(&mut self) {
        let (Some(fp), Some(suite)) = (self.fast.as_mut(), self.suite) else {
            return;
        };
        if fp.rx_stuck {
            return;
        }
        while let Some(epoch) = fp.rx_shared.wants() {
            match rekey::epoch_keys(self.stream.ssl(), suite, self.role, epoch) {
                Some((_, rx)) => fp.rx_shared.publish_ahead(EpochKey::new(epoch, rx)),
                None => {
                    fp.rx_stuck = true;
                    self.stats.rekey_failed += 1;
                    return;
                }
            }
        }
    }
}
