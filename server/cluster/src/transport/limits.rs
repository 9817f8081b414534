//! The transport's named limits and timings ([`Limits`]), their defaults and
//! the checks that keep them consistent with each other (an envelope must fit
//! a gRPC message; a payload must fit an envelope).

use std::time::Duration;

/// Default: at most this many messages in one envelope.
pub const MESSAGES_PER_ENVELOPE_MAX: usize = 1024;
/// Default: at most this many bytes in one encoded envelope (its frame
/// included). A payload larger than [`Limits::payload_bytes_max`] (derived
/// from it) is refused by `send`.
pub const ENVELOPE_BYTES_MAX: usize = 1024 * 1024;
/// Default: the largest gRPC message either side encodes or decodes. Must be
/// at least `envelope_bytes_max`.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default: messages waiting in one peer's outbound queue.
pub const QUEUE_MESSAGES_MAX: usize = 16 * 1024;
/// Default: payload bytes waiting in one peer's outbound queue.
pub const QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default: messages received and not yet taken by the consumer (all peers
/// together). When full, the receiving streams stop reading: HTTP/2 flow
/// control pushes back to the senders, whose bounded queues then drop and
/// count.
pub const INBOUND_QUEUE_MAX: usize = 16 * 1024;
/// Default: payload bytes received and not yet taken by the consumer (all
/// peers together); bounds the receiver's memory as `INBOUND_QUEUE_MAX` bounds
/// its message count. Full: the receiving streams wait, as above.
pub const INBOUND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default: envelopes handed to a connection's gRPC stream and not yet
/// written. Small on purpose: while the stream is busy, messages wait in the
/// outbound queue and the next envelope takes them all (that is the batching).
pub const STREAM_BUFFER_ENVELOPES: usize = 2;
/// Default: the first reconnection delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Default: the largest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Default: TCP connect plus HTTP/2 setup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default: from opening the stream to the peer's `Welcome` (dialler), or
/// from accepting the stream to its `Hello` (acceptor).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default: HTTP/2 keepalive ping interval on both sides, so a peer that
/// vanished without closing its socket is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Default: how long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default: how long `shutdown` waits for the server to close its streams
/// before it aborts it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The most an envelope's own fields and its `PeerFrame` wrapper take beyond
/// the messages: `from` (1 + 5), `epoch` (1 + 10), `seq` (1 + 10), the frame
/// tag and length (1 + 5), rounded up.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 64;
/// The most one message's field tag and length prefix take (1 + 5).
pub const MESSAGE_OVERHEAD_BYTES: usize = 6;

/// Every bound and timing of a transport. `Limits::default()` holds the
/// named defaults above; tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub messages_per_envelope_max: usize,
    pub envelope_bytes_max: usize,
    pub grpc_message_bytes_max: usize,
    pub queue_messages_max: usize,
    pub queue_bytes_max: usize,
    pub inbound_queue_max: usize,
    pub inbound_bytes_max: usize,
    pub stream_buffer_envelopes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            messages_per_envelope_max: MESSAGES_PER_ENVELOPE_MAX,
            envelope_bytes_max: ENVELOPE_BYTES_MAX,
            grpc_message_bytes_max: GRPC_MESSAGE_BYTES_MAX,
            queue_messages_max: QUEUE_MESSAGES_MAX,
            queue_bytes_max: QUEUE_BYTES_MAX,
            inbound_queue_max: INBOUND_QUEUE_MAX,
            inbound_bytes_max: INBOUND_BYTES_MAX,
            stream_buffer_envelopes: STREAM_BUFFER_ENVELOPES,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

impl Limits {
    /// The largest payload `send` accepts: one message alone in an envelope
    /// of `envelope_bytes_max`.
    pub fn payload_bytes_max(&self) -> usize {
        self.envelope_bytes_max
            .saturating_sub(ENVELOPE_OVERHEAD_BYTES + MESSAGE_OVERHEAD_BYTES)
    }

    /// Checks that the limits are usable together.
    ///
    /// # Errors
    /// A sentence naming the limit that is zero or inconsistent.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("messages_per_envelope_max", self.messages_per_envelope_max),
            ("queue_messages_max", self.queue_messages_max),
            ("queue_bytes_max", self.queue_bytes_max),
            ("inbound_queue_max", self.inbound_queue_max),
            ("stream_buffer_envelopes", self.stream_buffer_envelopes),
            ("payload_bytes_max", self.payload_bytes_max()),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!(
                    "transport limit {name} must be positive (envelope_bytes_max must exceed {} bytes)",
                    ENVELOPE_OVERHEAD_BYTES + MESSAGE_OVERHEAD_BYTES
                ));
            }
        }
        if self.grpc_message_bytes_max < self.envelope_bytes_max {
            return Err(format!(
                "transport limit grpc_message_bytes_max ({}) is below envelope_bytes_max ({})",
                self.grpc_message_bytes_max, self.envelope_bytes_max
            ));
        }
        if self.queue_bytes_max < self.payload_bytes_max() {
            return Err(format!(
                "transport limit queue_bytes_max ({}) is below the largest payload ({})",
                self.queue_bytes_max,
                self.payload_bytes_max()
            ));
        }
        if self.inbound_bytes_max < self.payload_bytes_max()
            || self.inbound_bytes_max > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(format!(
                "transport limit inbound_bytes_max ({}) is below the largest payload ({}) or above {}",
                self.inbound_bytes_max,
                self.payload_bytes_max(),
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(format!(
                "transport backoff must satisfy 0 < backoff_min ({:?}) <= backoff_max ({:?})",
                self.backoff_min, self.backoff_max
            ));
        }
        let timings = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        for (name, value) in timings {
            if value.is_zero() {
                return Err(format!("transport timing {name} must be positive"));
            }
        }
        Ok(())
    }
}

/// The delay before reconnection attempt `attempt` (0 for the first retry):
/// exponential from `min`, capped at `max`, with "equal jitter" (half the
/// step fixed, half random from `random`), never below `min` nor above `max`.
/// Jitter keeps the nodes of a cluster from redialling a restarted peer in
/// lockstep.
pub fn backoff(attempt: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let min_us = u64::try_from(min.as_micros()).unwrap_or(u64::MAX);
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    let step = min_us
        .checked_shl(attempt.min(63))
        .filter(|step| step >> attempt.min(63) == min_us)
        .unwrap_or(u64::MAX)
        .min(max_us);
    let half = step / 2;
    let jitter = if half == 0 { 0 } else { random % (half + 1) };
    Duration::from_micros((step - half + jitter).clamp(min_us, max_us))
}

/// A small deterministic generator (SplitMix64) for the backoff's jitter:
/// seeded per peer link, so two nodes' redials differ without a dependency.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_consistent() {
        assert_eq!(Limits::default().validate(), Ok(()));
        assert_eq!(
            Limits::default().payload_bytes_max(),
            ENVELOPE_BYTES_MAX - ENVELOPE_OVERHEAD_BYTES - MESSAGE_OVERHEAD_BYTES
        );
    }

    #[test]
    fn inconsistent_limits_are_named() {
        let limits = Limits {
            grpc_message_bytes_max: 1000,
            envelope_bytes_max: 2000,
            ..Limits::default()
        };
        assert!(
            limits
                .validate()
                .unwrap_err()
                .contains("grpc_message_bytes_max")
        );
        let limits = Limits {
            envelope_bytes_max: 10,
            grpc_message_bytes_max: 10,
            ..Limits::default()
        };
        assert!(limits.validate().unwrap_err().contains("payload_bytes_max"));
        let limits = Limits {
            backoff_min: Duration::from_secs(3),
            backoff_max: Duration::from_secs(1),
            ..Limits::default()
        };
        assert!(limits.validate().unwrap_err().contains("backoff_min"));
        let limits = Limits {
            queue_messages_max: 0,
            ..Limits::default()
        };
        assert!(
            limits
                .validate()
                .unwrap_err()
                .contains("queue_messages_max")
        );
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut jitter = Jitter::new(7);
        for attempt in 0..80 {
            for _ in 0..20 {
                let delay = backoff(attempt, min, max, jitter.next_u64());
                assert!(delay >= min && delay <= max, "{attempt}: {delay:?}");
                // Equal jitter: at least half the exponential step.
                let step = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
                assert!(delay >= step / 2, "{attempt}: {delay:?} < {:?}", step / 2);
            }
        }
        // No jitter drawn: exactly half the step, floored at min.
        assert_eq!(backoff(0, min, max, 0), min);
        assert_eq!(backoff(3, min, max, 0), Duration::from_millis(200));
        assert_eq!(backoff(40, min, max, 0), max / 2);
        // The largest jitter reaches the full step.
        assert_eq!(backoff(3, min, max, 200_000), Duration::from_millis(400));
        assert_eq!(
            backoff(u32::MAX, min, max, u64::MAX - 1),
            max / 2 + Duration::from_micros((u64::MAX - 1) % 1_000_001)
        );
    }

    #[test]
    fn jitter_spreads_delays() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut a = Jitter::new(1);
        let mut b = Jitter::new(2);
        let delays_a: Vec<_> = (0..8).map(|_| backoff(6, min, max, a.next_u64())).collect();
        let delays_b: Vec<_> = (0..8).map(|_| backoff(6, min, max, b.next_u64())).collect();
        assert_ne!(delays_a, delays_b);
        assert!(delays_a.iter().any(|delay| *delay != delays_a[0]));
    }
}
