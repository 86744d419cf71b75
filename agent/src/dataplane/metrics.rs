//! The dataplane's Prometheus metrics: how long a configuration change takes to reach the
//! maps, and what the mirror wrote.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct DataplaneMetrics {
    /// Diffing the model against the maps and writing the difference.
    pub apply_seconds: Histogram,
    /// From the configuration file's modification to the maps holding it (reloads only).
    pub change_to_maps_seconds: Histogram,
    pub map_writes: Counter,
    pub apply_errors: Counter,
    pub services: Gauge,
    pub targets: Gauge,
}

impl Default for DataplaneMetrics {
    fn default() -> Self {
        Self {
            // 10 µs .. ~10 s.
            apply_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 11)),
            // 1 ms .. ~16 s: includes the file poll interval.
            change_to_maps_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 15)),
            map_writes: Counter::default(),
            apply_errors: Counter::default(),
            services: Gauge::default(),
            targets: Gauge::default(),
        }
    }
}

impl DataplaneMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tether_dataplane");
        registry.register(
            "apply_seconds",
            "Time to diff the model against the kernel maps and write the difference",
            self.apply_seconds.clone(),
        );
        registry.register(
            "config_change_to_maps_seconds",
            "Time from the configuration file's modification to the kernel maps holding it",
            self.change_to_maps_seconds.clone(),
        );
        registry.register(
            "map_writes",
            "Kernel map entries written by the mirror",
            self.map_writes.clone(),
        );
        registry.register(
            "apply_errors",
            "Updates of the kernel maps that failed",
            self.apply_errors.clone(),
        );
        registry.register(
            "services",
            "Kernel services in the maps",
            self.services.clone(),
        );
        registry.register(
            "targets",
            "Kernel service targets in the maps",
            self.targets.clone(),
        );
    }
}
