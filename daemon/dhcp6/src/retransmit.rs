//! Retransmission of one message exchange (RFC 8415 §15) and the constants of §7.6.

use std::time::Duration;

use connectopus_core::Time;
use rand::Rng;
use rand::rngs::SmallRng;

/// Parameters of one kind of exchange: initial and maximum retransmission time, maximum
/// transmission count and maximum duration (0 / `None` = unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// IRT.
    pub irt: Duration,
    /// MRT (`Duration::ZERO` = no cap).
    pub mrt: Duration,
    /// MRC: the exchange fails after this many transmissions (0 = unbounded).
    pub mrc: u32,
    /// Solicit: the first RT is strictly greater than IRT (§18.2.1), and the first
    /// transmission waits a random 0..SOL_MAX_DELAY.
    pub solicit: bool,
}

/// SOL_MAX_DELAY.
pub const SOL_MAX_DELAY: Duration = Duration::from_secs(1);
/// Solicit: SOL_TIMEOUT, SOL_MAX_RT (the default; a server may change it by option 82).
pub const SOLICIT: Params = Params {
    irt: Duration::from_secs(1),
    mrt: Duration::from_secs(3600),
    mrc: 0,
    solicit: true,
};
/// Request: REQ_TIMEOUT, REQ_MAX_RT, REQ_MAX_RC.
pub const REQUEST: Params = Params {
    irt: Duration::from_secs(1),
    mrt: Duration::from_secs(30),
    mrc: 10,
    solicit: false,
};
/// Renew: REN_TIMEOUT, REN_MAX_RT (MRD: until T2).
pub const RENEW: Params = Params {
    irt: Duration::from_secs(10),
    mrt: Duration::from_secs(600),
    mrc: 0,
    solicit: false,
};
/// Rebind: REB_TIMEOUT, REB_MAX_RT (MRD: until the last valid lifetime ends).
pub const REBIND: Params = Params {
    irt: Duration::from_secs(10),
    mrt: Duration::from_secs(600),
    mrc: 0,
    solicit: false,
};
/// Release: REL_TIMEOUT, REL_MAX_RC.
pub const RELEASE: Params = Params {
    irt: Duration::from_secs(1),
    mrt: Duration::ZERO,
    mrc: 4,
    solicit: false,
};

/// RAND (§15): uniform in [-0.1, 0.1], or in (0, 0.1] when `positive` (the first Solicit RT).
fn rand(rng: &mut SmallRng, positive: bool) -> f64 {
    if positive {
        f64::from(rng.random_range(1u32..=1000)) / 10_000.0
    } else {
        rng.random_range(-0.1..=0.1)
    }
}

/// The state of one exchange: when it began, how often it was sent, the current RT.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Message type being exchanged.
    pub msg_type: u8,
    /// Transaction id (24 bits).
    pub xid: u32,
    params: Params,
    /// When the exchange fails regardless of count (MRD), if bounded.
    pub deadline: Option<Time>,
    /// First transmission (for the Elapsed Time option), once sent.
    pub first_sent: Option<Time>,
    /// Transmissions so far.
    pub sent: u32,
    rt: Duration,
    /// When to transmit next (or, past the deadline or MRC, to fail).
    pub next: Time,
}

impl Exchange {
    /// A new exchange starting at `now` (Solicit waits a random first delay).
    pub fn new(
        msg_type: u8,
        params: Params,
        deadline: Option<Time>,
        now: Time,
        rng: &mut SmallRng,
    ) -> Exchange {
        let delay = if params.solicit {
            SOL_MAX_DELAY.mul_f64(rng.random_range(0.0..=1.0))
        } else {
            Duration::ZERO
        };
        Exchange {
            msg_type,
            xid: rng.random::<u32>() & 0x00ff_ffff,
            params,
            deadline,
            first_sent: None,
            sent: 0,
            rt: Duration::ZERO,
            next: now + delay,
        }
    }

    /// Whether the exchange has failed by `now`: MRC transmissions made and the last RT
    /// over, or MRD passed.
    pub fn failed(&self, now: Time) -> bool {
        let count_over = self.params.mrc != 0 && self.sent >= self.params.mrc && now >= self.next;
        let time_over = self.deadline.is_some_and(|d| now >= d);
        count_over || time_over
    }

    /// Records a transmission at `now` and computes the next RT (§15); returns the Elapsed
    /// Time to send, in hundredths of a second (0 on the first transmission).
    pub fn transmitted(&mut self, now: Time, rng: &mut SmallRng) -> u16 {
        let first = *self.first_sent.get_or_insert(now);
        self.rt = if self.sent == 0 {
            // RT = IRT + RAND*IRT
            self.params
                .irt
                .mul_f64(1.0 + rand(rng, self.params.solicit))
        } else {
            // RT = 2*RTprev + RAND*RTprev, and MRT + RAND*MRT past MRT
            let rt = self.rt.mul_f64(2.0 + rand(rng, false));
            if !self.params.mrt.is_zero() && rt > self.params.mrt {
                self.params.mrt.mul_f64(1.0 + rand(rng, false))
            } else {
                rt
            }
        };
        self.sent += 1;
        self.next = now + self.rt;
        if let Some(deadline) = self.deadline {
            self.next = self.next.min(deadline);
        }
        let cs = now.saturating_since(first).as_millis() / 10;
        u16::try_from(cs).unwrap_or(u16::MAX)
    }

    /// The current retransmission timeout.
    pub fn rt(&self) -> Duration {
        self.rt
    }

    /// Overrides MRT (Solicit, from a server's SOL_MAX_RT option).
    pub fn set_mrt(&mut self, mrt: Duration) {
        self.params.mrt = mrt;
    }
}
