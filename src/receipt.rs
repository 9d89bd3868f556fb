//! Receipts: how a source that must acknowledge upstream (MQTT) learns that a record's fate
//! is settled.
//!
//! A [`Receipt`] is a cheap clonable handle. The queue keeps it beside the record, the router
//! hands a clone to each message (the record and its critical copy), and delivery drops them
//! only once the outcome is accounted for: delivered, or its dead letter written. When the
//! last clone is dropped, the callbacks run — for MQTT, the broker ack. Until then the source
//! holds the upstream message unacknowledged, which is what makes delivery at-least-once.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

type Callback = Box<dyn FnOnce() + Send>;

/// Runs its callbacks when the last clone is dropped, unless abandoned first.
#[derive(Clone)]
pub struct Receipt(Arc<Inner>);

/// A handle that does not keep the receipt pending (see [`Receipt::downgrade`]).
#[derive(Clone)]
pub struct WeakReceipt(Weak<Inner>);

struct Inner {
    callbacks: Mutex<Vec<Callback>>,
    armed: AtomicBool,
}

impl Receipt {
    /// A receipt that runs `on_resolved` once every clone is gone.
    pub fn new(on_resolved: impl FnOnce() + Send + 'static) -> Self {
        Receipt(Arc::new(Inner {
            callbacks: Mutex::new(vec![Box::new(on_resolved)]),
            armed: AtomicBool::new(true),
        }))
    }

    /// Runs `callback` too when this receipt resolves (a duplicate of a record still in
    /// flight is acknowledged with the original, not before it).
    pub fn also(&self, callback: impl FnOnce() + Send + 'static) {
        self.0
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(callback));
    }

    /// The record will not be delivered (the queue closed under it): no callback runs, for
    /// any clone, so the upstream message stays unacknowledged and is redelivered.
    pub fn abandon(&self) {
        self.0.armed.store(false, Ordering::Release);
    }

    pub fn downgrade(&self) -> WeakReceipt {
        WeakReceipt(Arc::downgrade(&self.0))
    }
}

impl WeakReceipt {
    /// The receipt, if it is still pending.
    pub fn upgrade(&self) -> Option<Receipt> {
        self.0.upgrade().map(Receipt)
    }

    /// Whether every clone is gone (its callbacks ran, or it was abandoned).
    pub fn is_resolved(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let callbacks = std::mem::take(
            self.callbacks
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for callback in callbacks {
            callback();
        }
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receipt(clones: {})", Arc::strong_count(&self.0))
    }
}

impl fmt::Debug for WeakReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeakReceipt(resolved: {})", self.is_resolved())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A receipt and a counter of how often it fired.
    pub(crate) fn counted() -> (Receipt, Arc<AtomicUsize>) {
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let receipt = Receipt::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        (receipt, fired)
    }

    #[test]
    fn fires_once_when_the_last_clone_drops() {
        let (receipt, fired) = counted();
        let copy = receipt.clone();
        let weak = receipt.downgrade();
        drop(receipt);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert!(!weak.is_resolved());
        drop(copy);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert!(weak.is_resolved());
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn chained_callbacks_fire_with_the_original() {
        let (receipt, fired) = counted();
        let second = Arc::new(AtomicUsize::new(0));
        let s = second.clone();
        receipt.downgrade().upgrade().unwrap().also(move || {
            s.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(second.load(Ordering::SeqCst), 0);
        drop(receipt);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert_eq!(second.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn abandoned_receipt_never_fires() {
        let (receipt, fired) = counted();
        let copy = receipt.clone();
        receipt.abandon();
        drop(receipt);
        drop(copy);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
    }
}
