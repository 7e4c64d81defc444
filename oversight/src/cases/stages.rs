//! Stage templates: the steps of a disciplinary case as data (`oversight/stages.toml`,
//! embedded; `{data_dir}/stages.toml` overrides it). Each stage says who may work it, who must
//! approve moving on and how many distinct approvers that takes, its time limit in working or
//! calendar days, and the extensions allowed. The file documents where each default comes from.

use jiandu_store::Role;
use serde::{Deserialize, Serialize};

use crate::OversightError;

/// The default template shipped with jiandu.
pub const DEFAULT_STAGES: &str = include_str!("../../stages.toml");

/// How a stage's time limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DayKind {
    /// Working days of the official calendar.
    Working,
    /// Calendar days.
    Calendar,
}

/// One stage of the workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Identifier, e.g. `investigation`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Roles who may work the stage and ask to move on.
    pub act: Vec<Role>,
    /// Roles who may approve moving on.
    pub approve: Vec<Role>,
    /// Distinct approvers needed (2 = the two-person rule; 0 = none).
    pub approvals: u32,
    /// The time limit.
    pub limit_days: u32,
    /// How the limit is counted.
    pub day_kind: DayKind,
    /// Extensions allowed in the stage.
    pub max_extensions: u32,
    /// Most days one extension adds.
    pub extension_days: u32,
    /// Roles who may grant an extension.
    pub extension_approvers: Vec<Role>,
    /// Where the defaults come from.
    #[serde(default)]
    pub basis: String,
}

/// A whole template: the reminder points and the stages in order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Reminders, in working days before each deadline (e.g. 3 and 1).
    pub remind_working_days: Vec<u32>,
    /// The stages, in order.
    pub stage: Vec<Stage>,
}

/// Parses and checks a template: at least one stage, unique keys, a positive limit, someone to
/// act and (when approvals are needed) enough possible approvers.
pub fn parse_template(text: &str) -> Result<Template, OversightError> {
    let invalid = |field: String, reason: String| OversightError::Invalid { field, reason };
    let file: Template = toml::from_str(text).map_err(|e| invalid("stages".into(), e.message().to_owned()))?;
    if file.stage.is_empty() {
        return Err(invalid("stage".into(), "a template needs at least one stage".into()));
    }
    for (i, s) in file.stage.iter().enumerate() {
        if s.key.trim().is_empty() || file.stage[..i].iter().any(|o| o.key == s.key) {
            return Err(invalid(format!("stage[{i}].key"), format!("must be non-empty and unique, got {:?}", s.key)));
        }
        if s.limit_days == 0 {
            return Err(invalid(format!("stage[{i}].limit_days"), "must be at least 1".into()));
        }
        if s.act.is_empty() {
            return Err(invalid(format!("stage[{i}].act"), "name at least one role".into()));
        }
        if s.approvals > 0 && s.approve.is_empty() {
            return Err(invalid(format!("stage[{i}].approve"), "approvals are needed but nobody may approve".into()));
        }
    }
    if let Some(k) = file.remind_working_days.iter().find(|k| **k == 0) {
        return Err(invalid("remind_working_days".into(), format!("must be at least 1, got {k}")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_walks_the_six_stages() {
        let template = parse_template(DEFAULT_STAGES).unwrap();
        assert_eq!(template.remind_working_days, [3, 1]);
        let stages = template.stage;
        let keys: Vec<&str> = stages.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clue_handling",
                "preliminary_verification",
                "investigation",
                "trial_review",
                "decision",
                "execution_appeal"
            ]
        );
        let investigation = &stages[2];
        assert_eq!((investigation.limit_days, investigation.day_kind), (90, DayKind::Calendar));
        assert_eq!((investigation.max_extensions, investigation.extension_days, investigation.approvals), (1, 90, 2));
        assert!(stages.iter().all(|s| !s.basis.is_empty()), "every default says where it comes from");
    }

    #[test]
    fn a_bad_template_names_the_field() {
        let bad = DEFAULT_STAGES.replacen("limit_days = 15", "limit_days = 0", 1);
        let e = parse_template(&bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "stage[0].limit_days"), "{e}");
    }
}
