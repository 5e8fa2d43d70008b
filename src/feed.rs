//! Where samples come from: the simulator, a pure function of the tick, or live traffic,
//! counted as it arrives and kept per tick. Everything that needs a sample (the
//! generator's publishing, REST, history, resumes) asks the feed, so both modes serve
//! the same API.

use std::sync::Arc;

use crate::config::Mode;
use crate::live::Live;
use crate::sample::{Sample, Tick};
use crate::simulator::{Model, Profile, Scenario};

/// The simulator's model (its interval serves both modes), and live mode's state when
/// the server counts real sites.
#[derive(Clone)]
pub struct Feed {
    pub model: Model,
    pub live: Option<Arc<Live>>,
}

impl Feed {
    pub fn mode(&self) -> Mode {
        match self.live {
            Some(_) => Mode::Live,
            None => Mode::Sim,
        }
    }

    /// The sites samples are for: `SITES` in live mode, none in sim mode.
    pub fn sites(&self) -> &[String] {
        self.live.as_ref().map_or(&[], |l| &l.settings.sites)
    }

    /// The shared ticks of tick `seq` (the original's four fields), one per site (one
    /// in sim mode): what the generator publishes. Live samples are computed from the
    /// counters at `now_ms`, and kept.
    pub fn ticks(&self, seq: u64, now_ms: u64) -> Vec<Tick> {
        match &self.live {
            Some(live) => live.tick(seq, now_ms).iter().map(Tick::new).collect(),
            None => vec![Tick::new(&self.model.sample(
                seq,
                self.model.scenario,
                false,
            ))],
        }
    }

    /// The oldest tick of `site` a resume can replay: live mode keeps `LIVE_HISTORY`;
    /// the simulator has them all.
    pub fn oldest(&self, site: usize) -> Option<u64> {
        self.live.as_ref().and_then(|live| live.oldest(site))
    }

    /// Sample `tick` of `site`: live mode's kept one, or the simulator's under `profile`
    /// and `scenario`, with its details when `details`.
    pub fn sample(
        &self,
        site: usize,
        profile: Profile,
        scenario: Scenario,
        details: bool,
        tick: u64,
    ) -> Sample {
        match &self.live {
            Some(live) => live.sample(site, tick),
            None => Model {
                profile,
                ..self.model
            }
            .sample(tick, scenario, details),
        }
    }
}
