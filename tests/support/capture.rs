//! A `tracing` layer that keeps tanker's log events, for the tests that check what is logged.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One event as it was logged: level, message and fields, all as text.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) level: Level,
    pub(crate) message: String,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Logged {
    /// The field `name`, which the event must have.
    pub(crate) fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("no field `{name}` in {self:?}"))
    }
}

/// Keeps every event of tanker's (target `tanker...`) logged while it is a subscriber's layer.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<Logged>>>);

impl Capture {
    /// The process-wide capture: every event logged on a thread without a subscriber of its
    /// own (librdkafka's threads, say). Installed once, as the global default.
    pub(crate) fn global() -> &'static Capture {
        static GLOBAL: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| {
            let capture = Capture::default();
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(capture.clone()),
            );
            capture
        })
    }

    /// Starts capturing on this thread (a current-thread runtime runs every task here), until
    /// the guard is dropped.
    pub(crate) fn start() -> (Self, DefaultGuard) {
        // A process-wide subscriber that listens to everything (and keeps nothing), set once:
        // without one, a test on another thread that logs while no subscriber exists anywhere can
        // make tracing cache "nobody listens" for a callsite just as this thread starts to
        // listen, and this thread then misses its events. With it, no callsite is ever cached
        // as unwanted; this thread's own subscriber still gets its events.
        let _ = Self::global();
        let capture = Self::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        // Tests on other threads without a subscriber may have cached "nobody listens" for a
        // callsite in the meantime; ask every callsite again.
        tracing::callsite::rebuild_interest_cache();
        (capture, guard)
    }

    /// Every event captured so far.
    pub(crate) fn events(&self) -> Vec<Logged> {
        self.0.lock().unwrap().clone()
    }

    /// The events captured so far with this message.
    pub(crate) fn with_message(&self, message: &str) -> Vec<Logged> {
        self.events()
            .into_iter()
            .filter(|event| event.message == message)
            .collect()
    }

    /// Takes the events at INFO, WARN or ERROR captured so far, leaving none.
    pub(crate) fn take_loud(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .filter(|event| event.level <= Level::INFO)
            .collect()
    }
}

struct Fields<'a>(&'a mut Logged);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = value;
        } else {
            self.0.fields.insert(field.name().to_owned(), value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .fields
            .insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if !event.metadata().target().starts_with("tanker") {
            return;
        }
        let mut logged = Logged {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut Fields(&mut logged));
        self.0.lock().unwrap().push(logged);
    }
}
