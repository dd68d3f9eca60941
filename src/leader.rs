//! Leader election on a `coordination.k8s.io/v1` Lease, so that several operator
//! replicas can run and exactly one reconciles.
//!
//! Expiry is judged by local observation, not by comparing clocks: a record that has
//! not changed for a whole lease duration *as seen by this process* is expired (the
//! same rule client-go uses), so clock skew between replicas does not matter.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a leader's claim lasts without renewal.
    pub duration: Duration,
    /// How often the leader renews, and how often a candidate retries.
    pub renew_every: Duration,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("reading Lease {0}: {1}")]
    Read(String, #[source] kube::Error),
    #[error("lost the leadership of Lease {0} (another replica holds it or renewal failed for too long)")]
    Lost(String),
}

/// What a candidate should do with the record it just read. Pure.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The lease is ours or free: write ourselves into it.
    Take { transition: bool },
    /// Someone else holds it and their claim is still fresh.
    Wait,
}

/// `observed_for`: how long the current record has been unchanged as seen locally.
pub fn decide(holder: Option<&str>, me: &str, observed_for: Duration, duration: Duration) -> Decision {
    match holder {
        Some(h) if h == me => Decision::Take { transition: false },
        None | Some("") => Decision::Take { transition: true },
        Some(_) if observed_for >= duration => Decision::Take { transition: true },
        Some(_) => Decision::Wait,
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen (resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.name)
    }

    /// Returns once this process holds the lease.
    pub async fn acquire(&mut self) {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.lease_ref(), identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(false) => {
                    if !waiting_logged {
                        tracing::info!(lease = %self.lease_ref(), "another replica leads; waiting");
                        waiting_logged = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }

    /// Renews until the lease is lost; returns the reason. A leader that cannot renew
    /// within the lease duration must stop, because another replica may take over.
    pub async fn hold(&mut self) -> Error {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => return Error::Lost(self.lease_ref()),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed");
                    // Give up before the lease can expire for others.
                    if last_ok.elapsed() + self.cfg.renew_every >= self.cfg.duration {
                        return Error::Lost(self.lease_ref());
                    }
                }
            }
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(&self.cfg.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }

    /// One round: `Ok(true)` when we hold the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let existing = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| Error::Read(self.lease_ref(), e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            // A conflict means another replica created it first: not ours this round.
            return Ok(self.api.create(&PostParams::default(), &lease).await.is_ok());
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let observed_for = match &self.observed {
            Some((v, since)) if *v == version => since.elapsed(),
            _ => {
                self.observed = Some((version, Instant::now()));
                Duration::ZERO
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.cfg.duration);
        match decide(
            spec.holder_identity.as_deref(),
            &self.cfg.identity,
            observed_for,
            duration,
        ) {
            Decision::Wait => Ok(false),
            Decision::Take { transition } => {
                let acquired = if transition {
                    now
                } else {
                    spec.acquire_time.map(|t| t.0).unwrap_or(now)
                };
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(transition);
                lease.spec = Some(self.spec(acquired, now, transitions));
                // replace carries the resourceVersion: a concurrent writer makes this fail.
                Ok(self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
                    .is_ok())
            }
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let d = Duration::from_secs(15);
        let s = Duration::from_secs;
        let table = [
            (None, s(0), Decision::Take { transition: true }),
            (Some(""), s(0), Decision::Take { transition: true }),
            (Some("me"), s(0), Decision::Take { transition: false }),
            (Some("me"), s(100), Decision::Take { transition: false }),
            (Some("other"), s(3), Decision::Wait),
            (Some("other"), s(14), Decision::Wait),
            (Some("other"), s(15), Decision::Take { transition: true }),
        ];
        for (holder, seen, want) in table {
            assert_eq!(decide(holder, "me", seen, d), want, "{holder:?} {seen:?}");
        }
    }
}
