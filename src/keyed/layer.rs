use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use tower_layer::Layer;

use super::handle::KeyedHandle;
use super::service::Keyed;
use super::table::{check_templates, ExemptFn, LabelFn, Settings, Table};
use crate::breaker::{BreakerBuilder, BreakerLayer, ErrorsAsFailures};
use crate::bulkhead::{BulkheadBuilder, BulkheadLayer};
use crate::ConfigError;

/// Wraps services in a [`Keyed`]: one key table per layer value, with a bulkhead and a breaker
/// per key.
///
/// Every service this layer value builds, and every clone of those services and of this layer,
/// shares one table: a key has one compartment and one breaker, whichever clone calls it. Build
/// one layer per dependency and reuse it. See the [module docs](super).
pub struct KeyedLayer<K, F, C = ErrorsAsFailures> {
    table: Arc<Table<K, C>>,
    key: F,
}

impl KeyedLayer<(), ()> {
    /// A builder for a layer that takes each request's key with `key`. The key's `Display`
    /// labels its bulkhead and breaker (see [`KeyedBuilder::label`] for another label, and
    /// [`builder_with_label`](Self::builder_with_label) for keys without `Display`).
    pub fn builder<Request, K, F>(key: F) -> KeyedBuilder<Request, K, F>
    where
        F: Fn(&Request) -> K,
        K: fmt::Display,
    {
        Self::builder_with_label(key, |key: &K| key.to_string())
    }

    /// A builder for a layer that takes each request's key with `key`, and labels each key's
    /// bulkhead and breaker with `label`.
    pub fn builder_with_label<Request, K, F>(
        key: F,
        label: impl Fn(&K) -> String + Send + Sync + 'static,
    ) -> KeyedBuilder<Request, K, F>
    where
        F: Fn(&Request) -> K,
    {
        KeyedBuilder {
            key,
            label: Box::new(label),
            name: Arc::from("keyed"),
            bulkhead: BulkheadLayer::builder(),
            breaker: BreakerLayer::builder(),
            max_keys: 1024,
            max_open: None,
            exempt: None,
            request: PhantomData,
        }
    }
}

impl<K, F, C> KeyedLayer<K, F, C>
where
    K: Hash + Eq + Clone,
    C: Clone,
{
    /// The table's counters, and each key's bulkhead and breaker.
    pub fn handle(&self) -> KeyedHandle<K, C> {
        KeyedHandle::new(self.table.clone())
    }
}

impl<K, F: Clone, C> Clone for KeyedLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, F, C> Layer<S> for KeyedLayer<K, F, C>
where
    K: Hash + Eq + Clone,
    F: Clone,
    C: Clone,
{
    type Service = Keyed<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Keyed::new(inner, self.table.clone(), self.key.clone())
    }
}

impl<K, F, C> fmt::Debug for KeyedLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLayer")
            .field("table", &self.table)
            .finish()
    }
}

/// Builds a [`KeyedLayer`], checking its settings.
///
/// | setting | default | why |
/// |---|---|---|
/// | [`name`](Self::name) | `"keyed"` | labels the table's log events and metrics, and prefixes each key's bulkhead and breaker name (`name/label`) |
/// | [`bulkhead`](Self::bulkhead) | [`BulkheadLayer::builder()`] (64 calls) | the compartment each key gets; it must have no waiting room |
/// | [`breaker`](Self::breaker) | [`BreakerLayer::builder()`] | the breaker each key gets, with the template's thresholds and classifier |
/// | [`max_keys`](Self::max_keys) | 1024 | bounds the memory and the metric series; idle keys make room for new ones |
/// | [`max_open`](Self::max_open) | none | without a cap, any number of keys may be open, each on its own |
/// | [`exempt_from_max_open`](Self::exempt_from_max_open) | none | every key counts toward the cap |
pub struct KeyedBuilder<Request, K, F, C = ErrorsAsFailures> {
    key: F,
    label: LabelFn<K>,
    name: Arc<str>,
    bulkhead: BulkheadBuilder,
    breaker: BreakerBuilder<C>,
    max_keys: usize,
    max_open: Option<usize>,
    exempt: Option<ExemptFn<K>>,
    request: PhantomData<fn(&Request)>,
}

impl<Request, K, F, C> KeyedBuilder<Request, K, F, C> {
    /// Names the layer: the `keyed` field of its log events, the `keyed` label of its metrics
    /// (see [`crate::metrics`]), and the prefix of each key's bulkhead and breaker name, which
    /// is `name/label`. Default: `"keyed"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Labels each key with `label` instead of its `Display`.
    pub fn label(mut self, label: impl Fn(&K) -> String + Send + Sync + 'static) -> Self {
        self.label = Box::new(label);
        self
    }

    /// The compartment each key gets: a copy of this template, named after the key. The
    /// template's own name is replaced. It must have no waiting room: the key is known only in
    /// `call`, where a caller may not wait.
    pub fn bulkhead(mut self, template: BulkheadBuilder) -> Self {
        self.bulkhead = template;
        self
    }

    /// The breaker each key gets: a copy of this template (thresholds, cool-down, classifier),
    /// with its own state, named after the key. The template's own name is replaced.
    pub fn breaker<C2>(self, template: BreakerBuilder<C2>) -> KeyedBuilder<Request, K, F, C2> {
        KeyedBuilder {
            key: self.key,
            label: self.label,
            name: self.name,
            bulkhead: self.bulkhead,
            breaker: template,
            max_keys: self.max_keys,
            max_open: self.max_open,
            exempt: self.exempt,
            request: PhantomData,
        }
    }

    /// The most keys the table holds. A new key beyond it takes the place of an idle key (no
    /// call in flight, a closed breaker), the least recently used as far as a CLOCK hand can
    /// tell; if every key is busy, the call is refused with
    /// [`BulkheadFull`](crate::bulkhead::BulkheadFull), counted by
    /// [`KeyedCounts::refused`](super::KeyedCounts::refused). At least 1.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// Caps how many keys may be open at once, as Envoy caps the share of hosts it ejects.
    /// Up to `max` keys may be open, each refusing its own calls while the others flow. When
    /// one more opens, the fault is taken for an outage of the whole dependency: every key's
    /// ordinary calls are refused with [`BreakerOpen`](crate::breaker::BreakerOpen), while the
    /// open keys keep probing on their own cool-downs; the outage ends when a probe closes a
    /// key and `max` or fewer are open again. At least 1, and below [`max_keys`](Self::max_keys).
    pub fn max_open(mut self, max: usize) -> Self {
        self.max_open = Some(max);
        self
    }

    /// Removes the cap on open keys (the default).
    pub fn no_max_open(mut self) -> Self {
        self.max_open = None;
        self
    }

    /// Keys for which `exempt` holds never count toward [`max_open`](Self::max_open): a
    /// catch-all key (the calls whose destination is not known yet, say), whose trouble says
    /// nothing about how many of the dependency's hosts are sick. Such a key still has its own
    /// breaker and compartment, and is refused with the others during an outage. Asked once per
    /// key, when the key enters the table.
    pub fn exempt_from_max_open(
        mut self,
        exempt: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.exempt = Some(Box::new(exempt));
        self
    }
}

impl<Request, K, F, C> KeyedBuilder<Request, K, F, C>
where
    F: Fn(&Request) -> K,
    K: Hash + Eq + Clone,
    C: Clone,
{
    /// Checks the settings and the templates, and builds the layer.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] if `max_keys` is zero, if `max_open` is zero or not below
    /// `max_keys`, if the bulkhead template has a waiting room, or if a template's own settings
    /// are invalid (the error its `build` would give).
    pub fn build(self) -> Result<KeyedLayer<K, F, C>, ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "max_keys",
                "must be at least 1; a table of 0 keys would refuse every call",
            ));
        }
        if let Some(max) = self.max_open {
            if max == 0 || max >= self.max_keys {
                return Err(ConfigError::new(
                    "max_open",
                    "must be at least 1 and below max_keys; call `no_max_open()` for no cap",
                ));
            }
        }
        check_templates(&self.bulkhead, &self.breaker)?;
        let table = Table::new(Settings {
            name: self.name,
            label: self.label,
            bulkhead: self.bulkhead,
            breaker: self.breaker,
            max_keys: self.max_keys,
            max_open: self.max_open,
            exempt: self.exempt,
        });
        Ok(KeyedLayer {
            table: Arc::new(table),
            key: self.key,
        })
    }
}

impl<Request, K, F, C> fmt::Debug for KeyedBuilder<Request, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("name", &self.name)
            .field("bulkhead", &self.bulkhead)
            .field("max_keys", &self.max_keys)
            .field("max_open", &self.max_open)
            .field("exempt_from_max_open", &self.exempt.is_some())
            .finish()
    }
}
