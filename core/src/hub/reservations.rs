//! Reservations: hold an address before the workload exists (a training job's master), hand
//! out a signed single-use token, give the address back when the token expires unused or the
//! workload that used it detaches.
//!
//! Holds `Hub::reserve`, `Hub::validate_reservation`, `Hub::release_reservation`,
//! `Hub::list_reservations`, `Hub::expire_reservations`.

use std::net::Ipv4Addr;
use std::time::Duration;

use weir_proto::v1 as pb;

use super::{Hub, HubError, State, Txn, brief};
use crate::auth::reservation::{Claims, TokenError};
use crate::clock::now_ms;
use crate::ipam::AddressError;
use crate::store::{Change, ReservationRecord};

impl Hub {
    pub async fn reserve(
        &self,
        req: pb::ReserveAddressRequest,
    ) -> Result<pb::ReserveAddressResponse, HubError> {
        let bounds = self.settings.reservation_ttl;
        let ttl = match req.ttl_seconds {
            0 => bounds.default,
            s => Duration::from_secs(u64::from(s)),
        };
        if ttl < bounds.min || ttl > bounds.max {
            return Err(HubError::InvalidArgument(format!(
                "ttl_seconds: {} is out of range (allowed: {} to {})",
                ttl.as_secs(),
                bounds.min.as_secs(),
                bounds.max.as_secs()
            )));
        }
        let requested: Option<Ipv4Addr> = match req.ip.trim() {
            "" => None,
            ip => Some(ip.parse().map_err(|_| {
                HubError::InvalidArgument(format!("ip: {} is not an IPv4 address", brief(ip)))
            })?),
        };
        let net = self.network(&req.network)?.clone();
        if net.overlay().is_none() {
            return Err(HubError::FailedPrecondition(format!(
                "network {}: the overlay is disabled; reservations hold cluster-wide addresses, which isolated mode does not have",
                net.name
            )));
        }
        let mut st = self.state.lock().await;
        if !st.runners.contains_key(&req.runner) {
            return Err(HubError::NotFound(format!(
                "runner: {} is not registered",
                brief(&req.runner)
            )));
        }
        let pool = self.pool(&mut st, &net.name, &req.runner)?;
        let ip = match requested {
            Some(ip) => {
                pool.take(ip).map_err(|e| address_error("ip", e))?;
                ip
            }
            None => pool
                .take_next()
                .map_err(|e| HubError::ResourceExhausted(e.to_string()))?,
        };
        let now = now_ms();
        let id = format!("res-{}", st.next_reservation);
        st.next_reservation += 1;
        let rec = ReservationRecord {
            id: id.clone(),
            network: net.name.clone(),
            runner: req.runner.clone(),
            ip,
            created_ms: now,
            expires_ms: now + ttl.as_millis() as i64,
            used_by: None,
        };
        let token = self.signer.sign(&Claims {
            id: id.clone(),
            network: rec.network.clone(),
            runner: rec.runner.clone(),
            ip,
            exp: rec.expires_ms,
        });
        let mut txn = Txn::default();
        txn.change(Change::PutReservation(rec.clone()));
        txn.change(Change::PutMeta(
            "next_reservation".into(),
            st.next_reservation.to_string(),
        ));
        txn.event(pb::EventKind::ReservationMade, |e| {
            e.runner = rec.runner.clone();
            e.network = rec.network.clone();
            e.ip = ip.to_string();
            e.reservation_id = id.clone();
            e.detail = format!("ttl {}s", ttl.as_secs());
        });
        if let Err(e) = self.commit(&mut st, txn).await {
            if let Some(p) = st.pools.get_mut(&self.pool_key(&net.name, &req.runner)) {
                p.release(ip);
            }
            return Err(e);
        }
        crate::failpoint::hit("hub.reserve.after-commit");
        st.reservations.insert(id.clone(), rec.clone());
        tracing::info!(reservation = %id, runner = %rec.runner, %ip, ttl_s = ttl.as_secs(), "address reserved");
        Ok(pb::ReserveAddressResponse {
            ip: ip.to_string(),
            token,
            expires_unix_ms: rec.expires_ms,
            reservation_id: id,
        })
    }

    /// Check a token and find its live reservation.
    pub(super) fn lookup<'s>(
        &self,
        st: &'s State,
        token: &str,
    ) -> Result<&'s ReservationRecord, HubError> {
        let claims = self.signer.verify(token).map_err(|e| match e {
            TokenError::Malformed(_) => HubError::InvalidArgument(e.to_string()),
            TokenError::BadSignature => HubError::PermissionDenied(e.to_string()),
        })?;
        if now_ms() >= claims.exp {
            return Err(HubError::FailedPrecondition(format!(
                "reservation_token: reservation {} expired",
                claims.id
            )));
        }
        let r = st.reservations.get(&claims.id).ok_or_else(|| {
            HubError::NotFound(format!(
                "reservation_token: reservation {} no longer exists (released)",
                claims.id
            ))
        })?;
        if r.runner != claims.runner || r.ip != claims.ip || r.network != claims.network {
            return Err(HubError::PermissionDenied(
                "reservation_token: does not match its reservation".into(),
            ));
        }
        Ok(r)
    }

    /// Mark a reservation used by `workload` (the caller holds the state lock, so two attaches
    /// with one token cannot both succeed).
    pub(super) fn claim_reservation(
        &self,
        st: &mut State,
        token: &str,
        runner: &str,
        network: &str,
        workload: &str,
    ) -> Result<ReservationRecord, HubError> {
        let r = self.lookup(st, token)?;
        if r.runner != runner {
            return Err(HubError::PermissionDenied(format!(
                "reservation_token: bound to runner {:?}, not {}",
                r.runner,
                brief(runner)
            )));
        }
        if r.network != network {
            return Err(HubError::PermissionDenied(format!(
                "reservation_token: bound to network {:?}, not {network:?}",
                r.network
            )));
        }
        if let Some(user) = &r.used_by {
            return Err(HubError::FailedPrecondition(format!(
                "reservation_token: already used by workload {user:?}"
            )));
        }
        let id = r.id.clone();
        let r = st
            .reservations
            .get_mut(&id)
            .ok_or_else(|| HubError::Internal("reservation vanished".into()))?;
        r.used_by = Some(workload.to_string());
        Ok(r.clone())
    }

    pub async fn validate_reservation(
        &self,
        req: pb::ValidateReservationRequest,
    ) -> Result<pb::Reservation, HubError> {
        let st = self.state.lock().await;
        let r = self.lookup(&st, &req.token)?;
        if !req.runner.is_empty() && r.runner != req.runner {
            return Err(HubError::PermissionDenied(format!(
                "reservation_token: bound to runner {:?}, not {}",
                r.runner,
                brief(&req.runner)
            )));
        }
        Ok(reservation_pb(r))
    }

    /// A runner's relayed release: only its own reservations; one that is gone (used and
    /// detached, expired, released) or in use is left as it is.
    pub async fn release_relayed_reservation(
        &self,
        runner: &str,
        token: &str,
    ) -> Result<(), HubError> {
        let r = match self
            .validate_reservation(pb::ValidateReservationRequest {
                token: token.to_string(),
                runner: runner.to_string(),
            })
            .await
        {
            Ok(r) => r,
            // Gone, or expired (the sweep frees it).
            Err(HubError::NotFound(_) | HubError::FailedPrecondition(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !r.workload_id.is_empty() {
            return Ok(());
        }
        match self
            .release_reservation(pb::ReleaseReservationRequest {
                token: token.to_string(),
            })
            .await
        {
            Ok(()) | Err(HubError::NotFound(_) | HubError::FailedPrecondition(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Give an unused reservation's address back.
    pub async fn release_reservation(
        &self,
        req: pb::ReleaseReservationRequest,
    ) -> Result<(), HubError> {
        let mut st = self.state.lock().await;
        let r = self.lookup(&st, &req.token)?.clone();
        if let Some(user) = &r.used_by {
            return Err(HubError::FailedPrecondition(format!(
                "reservation {} is used by workload {user:?}; detach the workload to free the address",
                r.id
            )));
        }
        let mut txn = Txn::default();
        txn.change(Change::DeleteReservation(r.id.clone()));
        txn.event(pb::EventKind::ReservationReleased, |e| {
            e.runner = r.runner.clone();
            e.network = r.network.clone();
            e.ip = r.ip.to_string();
            e.reservation_id = r.id.clone();
        });
        self.commit(&mut st, txn).await?;
        st.reservations.remove(&r.id);
        if let Some(p) = st.pools.get_mut(&self.pool_key(&r.network, &r.runner)) {
            p.release(r.ip);
        }
        Ok(())
    }

    pub async fn list_reservations(
        &self,
        req: pb::ListReservationsRequest,
    ) -> Result<Vec<pb::Reservation>, HubError> {
        let st = self.state.lock().await;
        if !req.runner.is_empty() && !st.runners.contains_key(&req.runner) {
            return Err(HubError::NotFound(format!(
                "runner: {} is not registered",
                brief(&req.runner)
            )));
        }
        Ok(st
            .reservations
            .values()
            .filter(|r| req.runner.is_empty() || r.runner == req.runner)
            .map(reservation_pb)
            .collect())
    }

    /// Unused reservations past their expiry give their address back.
    pub async fn expire_reservations(&self) {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let expired: Vec<ReservationRecord> = st
            .reservations
            .values()
            .filter(|r| r.used_by.is_none() && r.expires_ms <= now)
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut txn = Txn::default();
        for r in &expired {
            txn.change(Change::DeleteReservation(r.id.clone()));
            txn.event(pb::EventKind::ReservationExpired, |e| {
                e.runner = r.runner.clone();
                e.network = r.network.clone();
                e.ip = r.ip.to_string();
                e.reservation_id = r.id.clone();
            });
        }
        if let Err(e) = self.commit(&mut st, txn).await {
            tracing::error!(error = %e, "expiring reservations failed");
            return;
        }
        for r in expired {
            tracing::info!(reservation = %r.id, ip = %r.ip, "reservation expired unused");
            st.reservations.remove(&r.id);
            if let Some(p) = st.pools.get_mut(&self.pool_key(&r.network, &r.runner)) {
                p.release(r.ip);
            }
        }
    }
}

fn reservation_pb(r: &ReservationRecord) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.id.clone(),
        runner: r.runner.clone(),
        network: r.network.clone(),
        ip: r.ip.to_string(),
        expires_unix_ms: r.expires_ms,
        state: if r.used_by.is_some() {
            "used"
        } else {
            "reserved"
        }
        .into(),
        workload_id: r.used_by.clone().unwrap_or_default(),
    }
}

/// Map an address refusal to the right code, naming the request field.
pub(super) fn address_error(field: &str, e: AddressError) -> HubError {
    match e {
        AddressError::InUse { .. } => HubError::AlreadyExists(format!("{field}: {e}")),
        AddressError::Full { .. } => HubError::ResourceExhausted(e.to_string()),
        AddressError::Outside { .. } | AddressError::Reserved { .. } => {
            HubError::InvalidArgument(format!("{field}: {e}"))
        }
    }
}
