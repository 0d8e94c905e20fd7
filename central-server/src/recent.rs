//! What a server read from the database a moment ago and may trust for a short while: the
//! operators' standings and the devices' venue bindings, read on every request otherwise.
//! Entries older than the cache's time to live are read again; a server that changes a row
//! itself forgets the entry at once, other servers see the change within the TTL.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most entries before the cache starts over (a flood of distinct keys cannot grow it).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
pub struct Recent<K, V> {
    ttl: Duration,
    read: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    pub fn new(ttl: Duration) -> Recent<K, V> {
        Recent {
            ttl,
            read: Mutex::new(HashMap::new()),
        }
    }

    /// The value read less than the TTL ago, if any.
    pub fn get(&self, key: &K) -> Option<V> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(value, _)| value.clone())
    }

    pub fn put(&self, key: K, value: V) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if read.len() >= MAX_ENTRIES {
            read.clear();
        }
        read.insert(key, (value, Instant::now()));
    }

    /// Forgets every entry `stale` says is about a row this server just changed.
    pub fn forget_where(&self, stale: impl Fn(&K) -> bool) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.retain(|key, _| !stale(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_for_the_ttl_and_can_be_forgotten() {
        let cache = Recent::new(Duration::from_millis(30));
        cache.put(1, "a");
        cache.put(2, "b");
        assert_eq!(cache.get(&1), Some("a"));
        cache.forget_where(|k| *k == 1);
        assert_eq!(cache.get(&1), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&2), None, "older than the TTL");
    }
}
