//! Chains (`cron_job.on_success`, `on_failure`): the jobs they name, found in the job table,
//! and the check that a job is not its own descendant.
//!
//! Names are resolved each time (a job renamed or deleted since is an error then, not a stale
//! id), by one query per job looked at; chains are short and few, and looked at only when a row
//! changes (the monitor's verdict) or a run ends (its chained runs).

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::entity::job;
use crate::job::{ChainTarget, parse_chain};

/// The most jobs a cycle check visits; a chain graph larger than this is not followed further.
const MAX_VISITED: usize = 10_000;

/// The job ids `text` (`on_success` or `on_failure`, named `column` in errors) names:
/// `Ok(Err(why))` when it does not parse, a job does not exist, or a name is not unique.
pub async fn resolve<C: ConnectionTrait>(
    db: &C,
    column: &str,
    text: &str,
) -> Result<Result<Vec<i64>, String>, DbErr> {
    let targets = match parse_chain(text) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("{column} {e}"))),
    };
    let mut ids = Vec::with_capacity(targets.len());
    for target in targets {
        let (found, what): (Vec<i64>, String) = match &target {
            ChainTarget::Id(id) => (
                job::Entity::find_by_id(*id)
                    .select_only()
                    .column(job::Column::Id)
                    .into_tuple()
                    .all(db)
                    .await?,
                format!("job {id}"),
            ),
            ChainTarget::Name(name) => (
                job::Entity::find()
                    .select_only()
                    .column(job::Column::Id)
                    .filter(job::Column::Name.eq(name.as_str()))
                    .limit(2)
                    .into_tuple()
                    .all(db)
                    .await?,
                format!("job named {name:?}"),
            ),
        };
        match found.as_slice() {
            [id] => {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
            [] => return Ok(Err(format!("{column}: there is no {what}"))),
            _ => {
                return Ok(Err(format!(
                    "{column}: more than one job is named {:?}; name it by id",
                    match &target {
                        ChainTarget::Name(n) => n.as_str(),
                        ChainTarget::Id(_) => "",
                    }
                )));
            }
        }
    }
    Ok(Ok(ids))
}

/// What a job's chains start: the jobs `on_success` and `on_failure` name, or why they cannot.
pub async fn children<C: ConnectionTrait>(
    db: &C,
    row: &job::Model,
) -> Result<Result<Vec<i64>, String>, DbErr> {
    let mut all = Vec::new();
    for (column, text) in [
        ("on_success", &row.on_success),
        ("on_failure", &row.on_failure),
    ] {
        match resolve(db, column, text).await? {
            Ok(ids) => all.extend(ids),
            Err(why) => return Ok(Err(why)),
        }
    }
    all.sort_unstable();
    all.dedup();
    Ok(Ok(all))
}

/// Checks job `row`'s chains: every job they name exists, and following them (and the chains
/// of those jobs, and so on) never leads back to `row`. `Ok(Err(why))` says what is wrong:
/// `chain cycle: 3 → 5 → 3`.
pub async fn check<C: ConnectionTrait>(
    db: &C,
    row: &job::Model,
) -> Result<Result<(), String>, DbErr> {
    let first = match children(db, row).await? {
        Ok(ids) => ids,
        Err(why) => return Ok(Err(why)),
    };
    // Depth first, each job once, with the path that reached it.
    let mut seen = std::collections::HashSet::from([row.id]);
    let mut stack: Vec<Vec<i64>> = first.into_iter().map(|c| vec![row.id, c]).collect();
    while let Some(path) = stack.pop() {
        let id = *path.last().expect("a path is never empty");
        if id == row.id {
            let path: Vec<String> = path.iter().map(i64::to_string).collect();
            return Ok(Err(format!("chain cycle: {}", path.join(" → "))));
        }
        if !seen.insert(id) || seen.len() > MAX_VISITED {
            continue;
        }
        let Some(child) = job::Entity::find_by_id(id).one(db).await? else {
            continue;
        };
        // A job whose own chains are wrong says so in its own last_error.
        if let Ok(next) = children(db, &child).await? {
            for n in next {
                let mut longer = path.clone();
                longer.push(n);
                stack.push(longer);
            }
        }
    }
    Ok(Ok(()))
}
