//! Reading counters out of the datapath maps: from the daemon's own loaded
//! object, or from the pins when the daemon is not running.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use netiso_common::{
    maps, Counter, DropReason, FlowKey, FlowValue, LearnKey, LearnValue, LAYOUT_VERSION,
};

/// Opens one pinned map of the current layout.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(format!("maps-v{LAYOUT_VERSION}")).join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open {}: is the netiso daemon installed and has it run (as root)?",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// Every row of the flow (drop) table.
pub fn flows(map: &Map) -> Result<Vec<(FlowKey, FlowValue)>> {
    let table: BpfHashMap<&MapData, FlowKey, FlowValue> = BpfHashMap::try_from(map)?;
    // Rows evicted while we iterate are simply skipped.
    Ok(table.iter().flatten().collect())
}

/// Takes every row out of the learn table: read, then delete each key
/// read. A flow the kernel adds to a row between the two is lost to the
/// count (one new flow), never to the record: the next flow re-creates it.
pub fn drain_learn(map: &mut Map) -> Result<Vec<(LearnKey, LearnValue)>> {
    let mut table: BpfHashMap<&mut MapData, LearnKey, LearnValue> = BpfHashMap::try_from(map)?;
    let rows: Vec<(LearnKey, LearnValue)> = table.iter().flatten().collect();
    for (k, _) in &rows {
        // Already gone (deleted by a second reader): nothing to do.
        let _ = table.remove(k);
    }
    Ok(rows)
}

/// Sum over CPUs of a per-CPU counter array, index -> counter, zero rows left out.
pub fn per_cpu_totals(map: &Map) -> Result<BTreeMap<u32, Counter>> {
    let arr: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
    let mut out = BTreeMap::new();
    for i in 0..arr.len() {
        let per_cpu = arr.get(&i, 0)?;
        let mut total = Counter::default();
        for c in per_cpu.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
        if total.packets != 0 {
            out.insert(i, total);
        }
    }
    Ok(out)
}

/// Drops per reason.
pub fn reasons(map: &Map) -> Result<BTreeMap<DropReason, Counter>> {
    Ok(per_cpu_totals(map)?
        .into_iter()
        .filter_map(|(i, c)| Some((DropReason::from_u8(i as u8)?, c)))
        .collect())
}

/// The counters of one pin directory, opened for reading.
pub struct PinnedCounters {
    pub flows: Map,
    pub rules: Map,
    pub reasons: Map,
}

impl PinnedCounters {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            flows: open_pinned(pin_dir, maps::FLOWS)?,
            rules: open_pinned(pin_dir, maps::RULE_STATS)?,
            reasons: open_pinned(pin_dir, maps::REASON_STATS)?,
        })
    }
}
