//! A budget of bytes shared by every request: request bodies and built
//! answers reserve their size before they are buffered, and give it back
//! when they are dropped. It bounds what the HTTP API may hold in memory at
//! once, whatever the number of clients (`[limits] max_buffered_bytes`).
//!
//! A reservation larger than the whole budget is cut to the whole budget,
//! so one request always fits once the others are done. Waiting is bounded
//! by the caller's timeout; it then answers that the node is busy.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: u64,
    used: Mutex<u64>,
    /// Woken when bytes are given back, for threads that wait.
    freed: Condvar,
    /// Woken when bytes are given back, for tasks that wait.
    event: event_listener::Event,
}

/// Bytes held from a [`Budget`] until it is dropped.
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        {
            let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
            *used -= self.bytes;
        }
        self.inner.freed.notify_all();
        self.inner.event.notify(usize::MAX);
    }
}

impl Budget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Budget {
            inner: Arc::new(Inner {
                capacity,
                used: Mutex::new(0),
                freed: Condvar::new(),
                event: event_listener::Event::new(),
            }),
        }
    }

    /// The whole budget.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        *self.inner.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let bytes = bytes.min(self.inner.capacity);
        let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
        if *used + bytes > self.inner.capacity {
            return None;
        }
        *used += bytes;
        Some(Reservation {
            inner: self.inner.clone(),
            bytes,
        })
    }

    /// Reserves `bytes`, waiting up to `timeout` for them (from a task).
    pub async fn reserve(&self, bytes: u64, timeout: Duration) -> Option<Reservation> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_reserve(bytes) {
                return Some(r);
            }
            let listener = self.inner.event.listen();
            // A release between the try and the listen would be missed.
            if let Some(r) = self.try_reserve(bytes) {
                return Some(r);
            }
            let woken = futures_lite::future::or(
                async {
                    listener.await;
                    true
                },
                async {
                    async_io::Timer::at(deadline).await;
                    false
                },
            )
            .await;
            if !woken {
                return self.try_reserve(bytes);
            }
        }
    }

    /// Reserves `bytes`, waiting up to `timeout` for them (from a worker
    /// thread, never the executor).
    pub fn reserve_blocking(&self, bytes: u64, timeout: Duration) -> Option<Reservation> {
        let bytes = bytes.min(self.inner.capacity);
        let deadline = Instant::now() + timeout;
        let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *used + bytes <= self.inner.capacity {
                *used += bytes;
                return Some(Reservation {
                    inner: self.inner.clone(),
                    bytes,
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            used = self
                .inner
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Bytes that keep their reservation until the last copy is dropped (hyper
/// drops an answer's body once it is sent).
pub fn reserved_bytes(data: Vec<u8>, reservation: Reservation) -> bytes::Bytes {
    struct Owned(Vec<u8>, #[allow(dead_code)] Reservation);
    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    bytes::Bytes::from_owner(Owned(data, reservation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_given_back_on_drop_and_waiters_get_them() {
        let b = Budget::new(100);
        let a = b.try_reserve(60).unwrap();
        assert!(b.try_reserve(50).is_none());
        assert!(b.reserve_blocking(50, Duration::from_millis(20)).is_none());
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.reserve_blocking(50, Duration::from_secs(10)).is_some())
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        assert!(waiter.join().unwrap());
        assert_eq!(b.used(), 0);
        // Larger than the whole budget: cut to it.
        let all = b.try_reserve(1000).unwrap();
        assert_eq!(b.used(), 100);
        let late = futures_lite::future::block_on(b.reserve(1, Duration::from_millis(20)));
        assert!(late.is_none());
        drop(all);
        let r = futures_lite::future::block_on(b.reserve(1, Duration::from_millis(20)));
        assert!(r.is_some());
    }

    #[test]
    fn reserved_bytes_hold_their_share_until_dropped() {
        let b = Budget::new(10);
        let bytes = reserved_bytes(vec![1, 2, 3], b.try_reserve(3).unwrap());
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(b.used(), 3);
        assert_eq!(&copy[..], &[1, 2, 3]);
        drop(copy);
        assert_eq!(b.used(), 0);
    }
}
