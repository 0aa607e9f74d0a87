//! What a record weighs, for a hand-off bounded by bytes as well as by count.

use std::sync::Arc;

/// A record's weight function, shared by the senders.
pub(crate) type Weigh<Req> = Arc<dyn Fn(&Req) -> usize + Send + Sync>;

/// Tells a hand-off what each record weighs, for [`HandoffBuilder::max_bytes`].
///
/// Implemented by [`Unweighed`] (the default: no byte bound) and by any
/// `Fn(&Req) -> usize + Send + Sync + 'static`, such as
/// [`Record::weight`](crate::kafka::Record::weight).
///
/// [`HandoffBuilder::max_bytes`]: super::HandoffBuilder::max_bytes
pub trait Weigher<Req>: sealed::Sealed<Req> {}

/// No weight: the hand-off is bounded by its record count alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unweighed;

impl<Req> Weigher<Req> for Unweighed {}

impl<Req, F> Weigher<Req> for F where F: Fn(&Req) -> usize + Send + Sync + 'static {}

// Sealed: reachable by nobody outside the crate, so that only the two impls below exist.
#[allow(unreachable_pub)]
pub mod sealed {
    use super::{Unweighed, Weigh};
    use std::sync::Arc;

    pub trait Sealed<Req> {
        /// The weight function the senders call, or `None` for no byte bound.
        fn into_weigh(self) -> Option<Weigh<Req>>;
    }

    impl<Req> Sealed<Req> for Unweighed {
        fn into_weigh(self) -> Option<Weigh<Req>> {
            None
        }
    }

    impl<Req, F> Sealed<Req> for F
    where
        F: Fn(&Req) -> usize + Send + Sync + 'static,
    {
        fn into_weigh(self) -> Option<Weigh<Req>> {
            Some(Arc::new(self))
        }
    }
}
