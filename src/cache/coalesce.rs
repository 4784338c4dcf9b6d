//! Request coalescing: while one request for a key is in flight, identical ones wait for
//! it instead of going upstream too.
//!
//! The first request for a key leads: it holds a [`Leader`] until its answer is stored
//! (or it failed). The others follow: they wait for the leader to let go, then look the
//! cache up again; if the leader left nothing, they go upstream themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::key::CacheKey;

#[derive(Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
}

pub enum Turn {
    Lead(Leader),
    /// Resolves once the leader has let go.
    Follow(Follower),
}

/// The request that goes upstream for a key; followers wake when it is dropped.
pub struct Leader {
    key: CacheKey,
    flights: Arc<Coalescer>,
    done: watch::Sender<()>,
}

pub struct Follower(watch::Receiver<()>);

impl Follower {
    /// Waits until the leader has let go.
    pub async fn wait(mut self) {
        // Only the sender's drop ends the wait: nothing is ever sent.
        while self.0.changed().await.is_ok() {}
    }
}

impl Coalescer {
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Turn {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = flights.get(&key)
            && rx.has_changed().is_ok()
        {
            return Turn::Follow(Follower(rx.clone()));
        }
        let (done, rx) = watch::channel(());
        flights.insert(key, rx);
        Turn::Lead(Leader {
            key,
            flights: self.clone(),
            done,
        })
    }

    /// Keys with a request in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map_or(0, |f| f.len())
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flights = self
            .flights
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.done.subscribe()))
        {
            flights.remove(&self.key);
        }
        // `done` drops after this, waking the followers.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn followers_wake_when_the_leader_lets_go() {
        let c = Arc::new(Coalescer::default());
        let key = CacheKey([1; 32]);
        let Turn::Lead(leader) = c.join(key) else {
            panic!("the first leads")
        };
        let followers: Vec<_> = (0..5)
            .map(|_| match c.join(key) {
                Turn::Follow(f) => tokio::spawn(f.wait()),
                Turn::Lead(_) => panic!("the others follow"),
            })
            .collect();
        assert!(matches!(c.join(CacheKey([2; 32])), Turn::Lead(_)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(followers.iter().all(|f| !f.is_finished()));
        drop(leader);
        for f in followers {
            tokio::time::timeout(Duration::from_secs(1), f)
                .await
                .expect("woken")
                .unwrap();
        }
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.join(key), Turn::Lead(_)), "a new flight");
    }
}
