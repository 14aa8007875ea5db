//! A failed step of a container's setup, as the init reports it to whoever waits (the
//! parent at `create`, or `start`): the step's name and what went wrong, over a pipe.

/// A setup step that failed, and why.
#[derive(Debug, Clone)]
pub struct StepError {
    pub step: &'static str,
    pub detail: String,
}

pub fn step_err(step: &'static str, detail: impl Into<String>) -> StepError {
    StepError {
        step,
        detail: detail.into(),
    }
}

impl StepError {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.step, self.detail).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> (String, String) {
        let text = String::from_utf8_lossy(bytes);
        match text.split_once('\n') {
            Some((s, d)) => (s.to_string(), d.to_string()),
            None => ("container setup".to_string(), text.to_string()),
        }
    }
}
