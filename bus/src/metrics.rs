//! Bus health and consumer lag as Prometheus metrics, read from the backend at
//! scrape time (a custom collector), so the numbers are never older than the scrape
//! and the bus itself keeps no Prometheus types on its hot path.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use crate::backend::Bus;

/// Registers `danmaku_bus_*` metrics of `bus` into `registry`.
pub fn register(bus: Arc<dyn Bus>, registry: &Registry) -> Result<(), prometheus::Error> {
    registry.register(Box::new(BusCollector::new(bus)?))
}

struct BusCollector {
    bus: Arc<dyn Bus>,
    up: IntGauge,
    published: IntCounter,
    publish_errors: IntCounter,
    consumed: IntCounter,
    reassignments: IntCounter,
    topic_creations: IntCounter,
    lag: IntGaugeVec,
    descs: Vec<Desc>,
}

impl BusCollector {
    fn new(bus: Arc<dyn Bus>) -> Result<Self, prometheus::Error> {
        let kind = bus.kind();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("backend", kind);
        let up = IntGauge::with_opts(opts(
            "danmaku_bus_up",
            "1 when the bus can publish and deliver, 0 while its broker is unreachable.",
        ))?;
        let published = IntCounter::with_opts(opts(
            "danmaku_bus_published_total",
            "Messages the broker acknowledged.",
        ))?;
        let publish_errors = IntCounter::with_opts(opts(
            "danmaku_bus_publish_errors_total",
            "Publishes that failed (broker down, timeout).",
        ))?;
        let consumed = IntCounter::with_opts(opts(
            "danmaku_bus_consumed_total",
            "Messages received by this process's subscriptions.",
        ))?;
        let reassignments = IntCounter::with_opts(opts(
            "danmaku_bus_reassignments_total",
            "Times a subscription re-assigned partitions (topic re-created or resized).",
        ))?;
        let topic_creations = IntCounter::with_opts(opts(
            "danmaku_bus_topic_creations_total",
            "Times this process created the topic (at start, after a broker lost it).",
        ))?;
        let lag = IntGaugeVec::new(
            opts(
                "danmaku_bus_consumer_lag",
                "Messages in the partition not yet consumed (high watermark - position), summed over subscriptions.",
            ),
            &["partition"],
        )?;
        let descs = [
            up.desc(),
            published.desc(),
            publish_errors.desc(),
            consumed.desc(),
            reassignments.desc(),
            topic_creations.desc(),
            lag.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(BusCollector {
            bus,
            up,
            published,
            publish_errors,
            consumed,
            reassignments,
            topic_creations,
            lag,
            descs,
        })
    }

    fn refresh(&self) {
        self.up.set(i64::from(self.bus.healthy()));
        let Some(stats) = self.bus.kafka_stats() else {
            return;
        };
        let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.published, stats.published);
        catch_up(&self.publish_errors, stats.publish_errors);
        catch_up(&self.consumed, stats.consumed);
        catch_up(&self.reassignments, stats.reassignments);
        catch_up(&self.topic_creations, stats.topic_creations);
        self.lag.reset();
        for sub in &stats.subscriptions {
            for p in sub.partitions.iter().filter(|p| p.lag >= 0) {
                self.lag
                    .with_label_values(&[&p.partition.to_string()])
                    .add(p.lag);
            }
        }
    }
}

impl Collector for BusCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut out = Vec::new();
        out.extend(self.up.collect());
        out.extend(self.published.collect());
        out.extend(self.publish_errors.collect());
        out.extend(self.consumed.collect());
        out.extend(self.reassignments.collect());
        out.extend(self.topic_creations.collect());
        out.extend(self.lag.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBus;
    use crate::memory::MemoryBusConfig;

    #[test]
    fn memory_bus_reports_up() {
        let registry = Registry::new();
        register(
            Arc::new(MemoryBus::new(MemoryBusConfig::default())),
            &registry,
        )
        .unwrap();
        let families = registry.gather();
        let up = families
            .iter()
            .find(|f| f.name() == "danmaku_bus_up")
            .expect("danmaku_bus_up is served");
        assert_eq!(up.get_metric()[0].get_gauge().get_value(), 1.0);
    }
}
