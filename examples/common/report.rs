//! What the reports of loadgen and `mqtt_load` share: the median of the rounds, one line of JSON, and
//! the first errors in the text.

use anyhow::{Context, Result};
use serde::Serialize;

/// Print `report` as one line of JSON.
pub fn print_json(report: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(report).context("writing the report")?;
    println!("{line}");
    Ok(())
}

/// Print the first errors of a run, one a line.
pub fn print_errors(errors: &[String]) {
    for error in errors {
        println!("  error: {error}");
    }
}

/// One measured round of a load.
pub trait Round {
    /// The rate the rounds are ranked by.
    fn acks_per_s(&self) -> f64;
    /// Keep every round's rate alongside (on the median round).
    fn set_rounds_acks_per_s(&mut self, rates: Vec<f64>);
}

/// The round with the median ack rate, with every round's rate alongside to show the spread, when
/// there were several (`None` without rounds).
pub fn median<R: Round>(mut runs: Vec<R>) -> Option<R> {
    if runs.is_empty() {
        return None;
    }
    runs.sort_by(|a, b| a.acks_per_s().total_cmp(&b.acks_per_s()));
    let rates: Vec<f64> = runs.iter().map(Round::acks_per_s).collect();
    let mut median = runs.swap_remove((runs.len() - 1) / 2);
    if rates.len() > 1 {
        median.set_rounds_acks_per_s(rates);
    }
    Some(median)
}
