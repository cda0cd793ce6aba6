//! Routes of credit: assessing a person into an offer, reading and accepting it, the credit line.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, Uri},
    response::Response,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ApiPath, AppState, OptionalJson, json};
use crate::{
    Error,
    auth::Principal,
    error::{AuthProblems, BodyProblems, Problem, Result},
    idempotency::{self, Answer, KeyHeader, MaybeKey, Once},
    offers::{self, CurrentCreditLine, OfferRequest, OfferView, ToRecord},
    pricing,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}/credit-offers", post(create_offer))
        .route("/v1/users/{user_id}/credit-limit", get(get_credit_limit))
        .route("/v1/credit-offers/{offer_id}", get(get_offer))
        .route("/v1/credit-offers/{offer_id}/accept", post(accept_offer))
}

/// Smallest amount a person may ask to borrow, in cents (R$ 100.00). The pricing itself works
/// from R$ 0.01, but below about R$ 100 the cent roundings, not the rates, decide the price: a
/// R$ 1.00 loan over 48 months has installments of R$ 0.02 and a last one of R$ 0.54, and
/// principals up to R$ 3.51 can show a CET below the nominal rate (docs/MODEL.md). From here on
/// every priced principal (this, or the approved line, at least R$ 200) has CET >= the nominal
/// rate (the pricing's property test).
pub const MIN_REQUESTED_AMOUNT_CENTS: i64 = 10_000;

/// What the person asks for; both optional.
#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OfferBody {
    /// The amount to borrow, in cents, at least R$ 100.00; priced up to the approved line (the
    /// whole line when absent).
    #[schema(minimum = 10_000, maximum = 10_000_000_000_i64)]
    pub amount_cents: Option<i64>,
    /// Months to repay in; capped at the policy's maximum for the credit type.
    #[schema(minimum = 1, maximum = 120)]
    pub term_months: Option<i32>,
}

impl OfferBody {
    fn parse(&self) -> Result<OfferRequest> {
        if let Some(a) = self.amount_cents
            && !(MIN_REQUESTED_AMOUNT_CENTS..=pricing::MAX_PRINCIPAL_CENTS).contains(&a)
        {
            return Err(Error::invalid(
                "amount_cents",
                format!(
                    "must be between {MIN_REQUESTED_AMOUNT_CENTS} (R$ 100.00) and {}, not {a}",
                    pricing::MAX_PRINCIPAL_CENTS
                ),
            ));
        }
        if let Some(t) = self.term_months
            && !(1..=120).contains(&t)
        {
            return Err(Error::invalid("term_months", "must be between 1 and 120"));
        }
        Ok(OfferRequest {
            amount_cents: self.amount_cents,
            term_months: self.term_months,
        })
    }
}

/// Assess a person now and create a credit offer: approved or declined, with reasons, the
/// model's result and, when approved, its price (monthly rate, IOF, CET, installments).
/// At most a set number of assessments per person per period (429 past it).
#[utoipa::path(post, path = "/v1/users/{user_id}/credit-offers", tag = "credit",
    request_body(content = Option<OfferBody>, description = "Optional: an amount and a term."),
    params(("user_id" = Uuid, Path, description = "The person."), KeyHeader),
    responses((status = 201, body = OfferView),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              BodyProblems,
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn create_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    MaybeKey(key): MaybeKey,
    uri: Uri,
    OptionalJson(body): OptionalJson<OfferBody>,
) -> Result<Answer> {
    principal.ensure_can_access(user_id)?;
    let request = body.parse()?;
    let once = key.map(|k| Once::new(&state.idempotency, principal, &k, uri.path(), &body));
    if let Some(replay) = idempotency::replay(once.as_ref(), &state.pool).await? {
        return Ok(replay);
    }
    let prepared = state.assessor.prepare(user_id, request).await?;
    state.offers.submit(ToRecord::new(prepared, once)).await
}

/// An offer's current state.
#[utoipa::path(get, path = "/v1/credit-offers/{offer_id}", tag = "credit",
    params(("offer_id" = Uuid, Path, description = "The offer.")),
    responses((status = 200, body = OfferView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn get_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(offer_id): ApiPath<Uuid>,
) -> Result<Json<OfferView>> {
    let offer = offers::find(&state.pool, offer_id).await?;
    // Someone else's offer is "not found", not "forbidden": ids are not to be probed.
    if principal.ensure_can_access(offer.user_id).is_err() {
        return Err(Error::NotFound("offer"));
    }
    Ok(Json(offer.into()))
}

/// Accept an offer. The new limit is applied asynchronously; the phone is notified when it is.
/// Accepting an accepted or applied offer again answers its state (safe to retry).
#[utoipa::path(post, path = "/v1/credit-offers/{offer_id}/accept", tag = "credit",
    params(("offer_id" = Uuid, Path, description = "The offer.")),
    responses((status = 202, body = OfferView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn accept_offer(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(offer_id): ApiPath<Uuid>,
) -> Result<Response> {
    let offer = offers::accept(&state.pool, principal, offer_id).await?;
    Ok(json(StatusCode::ACCEPTED, OfferView::from(offer)))
}

/// The person's current credit line (404 until an offer has been applied).
#[utoipa::path(get, path = "/v1/users/{user_id}/credit-limit", tag = "credit",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 200, body = CurrentCreditLine),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn get_credit_limit(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<CurrentCreditLine>> {
    principal.ensure_can_access(user_id)?;
    Ok(Json(offers::credit_line(&state.pool, user_id).await?))
}
