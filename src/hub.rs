//! The hub: the latest sample and the subscribers that want the next ones.
//!
//! The generator publishes; REST reads [`Hub::latest`]; each streaming client holds a
//! [`Subscription`] with its own small bounded channel. Publishing never blocks: a
//! subscriber whose channel is still full (its thread has not taken the previous samples)
//! misses this one. So one stuck client can never delay the
//! generator or any other client. The hub knows nothing about sockets or framing.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::sample::Tick;
use crate::sync::lock;

/// How many samples may wait for a subscriber's thread. Two rides out one scheduling
/// hiccup; more would only deliver stale data late.
const QUEUE: usize = 2;

pub struct Hub {
    /// Lock order: `subscribers`, then `latest`.
    subscribers: Mutex<Vec<Sender<Tick>>>,
    latest: Mutex<Tick>,
}

/// A live subscription. Dropping it unsubscribes without taking the hub's lock: the
/// next [`Hub::publish`] finds its channel disconnected and removes it. So a stream's
/// thread, which runs at a low priority, never holds the lock the generator needs to
/// publish.
pub struct Subscription {
    pub samples: Receiver<Tick>,
}

impl Hub {
    /// A hub that already holds its first sample, so `latest` is never empty.
    pub fn new(first: Tick) -> Hub {
        Hub {
            subscribers: Mutex::new(Vec::new()),
            latest: Mutex::new(first),
        }
    }

    /// The most recently published sample.
    pub fn latest(&self) -> Tick {
        lock(&self.latest).clone()
    }

    /// Subscribes, returning the latest sample together with the channel of the following
    /// ones: taken under one lock, so nothing is missed or repeated in between.
    pub fn subscribe(&self) -> (Tick, Subscription) {
        let (tx, rx) = bounded(QUEUE);
        let mut subscribers = lock(&self.subscribers);
        subscribers.push(tx);
        let latest = lock(&self.latest).clone();
        drop(subscribers);
        (latest, Subscription { samples: rx })
    }

    /// Makes `tick` the latest sample and offers it to every subscriber without waiting.
    /// Returns how many subscribers missed it because their queue was full.
    pub fn publish(&self, tick: Tick) -> usize {
        let mut subscribers = lock(&self.subscribers);
        *lock(&self.latest) = tick.clone();
        let mut missed = 0;
        subscribers.retain(|tx| match tx.try_send(tick.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                missed += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tick(seq: u64) -> Tick {
        Tick {
            seq,
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    #[test]
    fn subscriber_gets_latest_then_every_new_sample() {
        let hub = Hub::new(tick(1));
        let (first, sub) = hub.subscribe();
        assert_eq!(first.seq, 1);
        hub.publish(tick(2));
        hub.publish(tick(3));
        assert_eq!(sub.samples.try_recv().unwrap().seq, 2);
        assert_eq!(sub.samples.try_recv().unwrap().seq, 3);
        assert_eq!(hub.latest().seq, 3);
    }

    #[test]
    fn a_full_subscriber_never_blocks_publish() {
        let hub = Hub::new(tick(0));
        let (_, stuck) = hub.subscribe();
        let (_, live) = hub.subscribe();
        let mut missed = 0;
        for seq in 1..=10 {
            missed += hub.publish(tick(seq));
            assert_eq!(live.samples.try_recv().unwrap().seq, seq);
        }
        assert_eq!(
            missed,
            10 - QUEUE,
            "the stuck subscriber's misses are reported"
        );
        assert_eq!(stuck.samples.len(), QUEUE);
        assert_eq!(stuck.samples.recv().unwrap().seq, 1, "the oldest are kept");
    }

    #[test]
    fn a_dropped_subscription_is_removed_by_the_next_publish() {
        let hub = Hub::new(tick(0));
        let (_, a) = hub.subscribe();
        let (_, b) = hub.subscribe();
        let count = || lock(&hub.subscribers).len();
        drop(a);
        assert_eq!(count(), 2, "dropping takes no lock");
        assert_eq!(
            hub.publish(tick(1)),
            0,
            "a dropped subscriber is not a miss"
        );
        assert_eq!(count(), 1);
        assert_eq!(b.samples.recv().unwrap().seq, 1);
        drop(b);
        hub.publish(tick(2));
        assert_eq!(count(), 0);
    }

    #[test]
    fn every_subscriber_gets_the_same_bytes() {
        let hub = Hub::new(tick(0));
        let (_, a) = hub.subscribe();
        let (_, b) = hub.subscribe();
        hub.publish(tick(1));
        let (x, y) = (a.samples.recv().unwrap(), b.samples.recv().unwrap());
        assert_eq!(x.json.as_ptr(), y.json.as_ptr());
    }
}
