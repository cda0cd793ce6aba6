//! Routes about a person: the person, their consent and tokens, their phones, their transactions.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, Uri},
    response::Response,
    routing::{delete, get, post, put},
};
use ecs_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ApiJson, ApiPath, ApiQuery, AppState, OptionalJson, json};
use crate::{
    Error,
    auth::Principal,
    devices::{self, DeviceRegistered},
    error::{AuthProblems, BodyProblems, Problem, Result},
    finance::{self, Direction, MAX_TRANSACTIONS_PER_REQUEST, Transaction, TransactionsRecorded},
    idempotency::{self, Answer, KeyHeader, MaybeKey, Once},
    notify::{self, NotificationPage},
    people::{
        self, ConsentView, DisplayName, EmotionalProfile, NewPersonRow, PersonCreated, PersonTx,
        PersonView, TokenIssued,
    },
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/users/{user_id}", get(get_user).delete(erase_user))
        .route(
            "/v1/users/{user_id}/emotional-profile",
            get(get_emotional_profile),
        )
        .route("/v1/users/{user_id}/consent", put(set_consent))
        .route("/v1/users/{user_id}/tokens", post(rotate_token))
        .route("/v1/users/{user_id}/devices", post(register_device))
        .route(
            "/v1/users/{user_id}/devices/{device_id}",
            delete(revoke_device),
        )
        .route(
            "/v1/users/{user_id}/transactions",
            post(record_transactions),
        )
        .route("/v1/users/{user_id}/notifications", get(list_notifications))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    /// `next_after` of the previous page; absent: from the first.
    #[param(max_length = 80)]
    pub after: Option<String>,
    /// Notifications per page, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// The person's notifications, oldest first, a page at a time: what a phone that was away
/// missed (catch-up), or everything. A notification counts as delivered once the phone
/// acknowledged it over MQTT.
#[utoipa::path(get, path = "/v1/users/{user_id}/notifications", tag = "people",
    params(("user_id" = Uuid, Path, description = "The person."), NotificationsQuery),
    responses((status = 200, body = NotificationPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn list_notifications(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<NotificationsQuery>,
) -> Result<Json<NotificationPage>> {
    principal.ensure_can_access(user_id)?;
    let after = query
        .after
        .as_deref()
        .map(notify::Cursor::parse)
        .transpose()?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=notify::MAX_PAGE).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 100"));
    }
    Ok(Json(
        notify::page(&state.pool, user_id, after, limit).await?,
    ))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// How the person wants to be called.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub display_name: String,
    /// Consent to the use of emotional data (LGPD Art. 11). Without it no device can be
    /// registered and decisions use financial data only.
    pub emotional_data_consent: bool,
}

/// Create a person (admin only). Answers the person's API token once.
#[utoipa::path(post, path = "/v1/users", tag = "people", request_body = CreateUser,
    params(KeyHeader),
    responses((status = 201, body = PersonCreated),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              BodyProblems,
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    MaybeKey(key): MaybeKey,
    uri: Uri,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<Answer> {
    principal.ensure_admin()?;
    let name = DisplayName::parse(&body.display_name)?;
    let once = key.map(|k| Once::new(&state.idempotency, principal, &k, uri.path(), &body));
    if let Some(replay) = idempotency::replay(once.as_ref(), &state.pool).await? {
        return Ok(replay);
    }
    let (pool, once, keyring) = (&state.pool, once.as_ref(), &*state.keyring);
    let row = NewPersonRow {
        user_id: Uuid::new_v4(),
        display_name: name.as_str(),
        consent: body.emotional_data_consent,
    };
    let row = &row;
    let answer = people::retry(|| async move {
        let mut tx = PersonTx::insert(pool, keyring, row).await?;
        // A replay rolls back the person just inserted.
        let answer = idempotency::answer_once!(
            once,
            &mut tx,
            StatusCode::CREATED,
            people::create(&mut tx).await?
        );
        tx.finish().await?;
        Ok(answer)
    })
    .await?;
    if !answer.replayed {
        tracing::info!(user_id = %row.user_id, "user created");
    }
    Ok(answer)
}

/// A person's profile.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "people",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 200, body = PersonView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<PersonView>> {
    principal.ensure_can_access(user_id)?;
    Ok(Json(
        people::view(&state.pool, &state.keyring, user_id).await?,
    ))
}

/// Erase a person and everything about them (LGPD Art. 18): profile, devices, readings,
/// features, transactions, assessments, offers, credit line, notifications, tokens.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "people",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 204, description = "Erased."),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn erase_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<StatusCode> {
    principal.ensure_can_access(user_id)?;
    let pool = &state.pool;
    // The bulk first, in short transactions; then the rest under the person's lock.
    people::erase_readings(pool, user_id).await?;
    people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        people::erase(&mut tx).await?;
        tx.finish().await
    })
    .await?;
    state.auth.tokens().forget_user(user_id);
    Ok(StatusCode::NO_CONTENT)
}

/// What the system has concluded from a person's emotional data (LGPD Art. 18/20: the person
/// can see it).
#[utoipa::path(get, path = "/v1/users/{user_id}/emotional-profile", tag = "people",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 200, body = EmotionalProfile),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn get_emotional_profile(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Json<EmotionalProfile>> {
    principal.ensure_can_access(user_id)?;
    Ok(Json(people::emotional_profile(&state.pool, user_id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentChange {
    pub emotional_data_consent: bool,
}

/// Give or withdraw consent to the use of emotional data (LGPD Art. 8 §5, 11). Withdrawing stops
/// collection at once (ingest discards the phone's readings) and removes the derived emotional
/// profile, so no later decision uses it; erasing what was collected is `DELETE /v1/users/{id}`.
#[utoipa::path(put, path = "/v1/users/{user_id}/consent", tag = "people", request_body = ConsentChange,
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 200, body = ConsentView),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              BodyProblems,
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn set_consent(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ConsentChange>,
) -> Result<Json<ConsentView>> {
    principal.ensure_can_access(user_id)?;
    let (pool, consent) = (&state.pool, body.emotional_data_consent);
    let by = match principal {
        Principal::Admin => people::ConsentBy::Admin,
        Principal::User(_) => people::ConsentBy::Person,
    };
    let view = people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        let view = people::set_consent(&mut tx, consent, by).await?;
        tx.finish().await?;
        Ok(view)
    })
    .await?;
    Ok(Json(view))
}

/// Rotate a person's API token: every existing token of the person is revoked and a new one
/// issued (a lost phone, a leaked token).
#[utoipa::path(post, path = "/v1/users/{user_id}/tokens", tag = "people",
    params(("user_id" = Uuid, Path, description = "The person.")),
    responses((status = 201, body = TokenIssued),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn rotate_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response> {
    principal.ensure_can_access(user_id)?;
    let pool = &state.pool;
    let issued = people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        let issued = people::rotate_token(&mut tx).await?;
        tx.finish().await?;
        Ok(issued)
    })
    .await?;
    // Other replicas forget the old tokens when the revocation's notification reaches them.
    state.auth.tokens().forget_user(user_id);
    Ok(json(StatusCode::CREATED, issued))
}

#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// Generated when absent. Only the admin/service token may choose it (a person's token gets
    /// a random id).
    #[schema(pattern = "^[A-Za-z0-9]{1,32}$")]
    pub device_id: Option<String>,
}

/// Register a phone for a person (at most 5 active). Requires the person's consent to emotional
/// data.
#[utoipa::path(post, path = "/v1/users/{user_id}/devices", tag = "devices",
    request_body(content = Option<RegisterDevice>, description = "Optional: an empty body registers a device with a random id."),
    params(("user_id" = Uuid, Path, description = "The person."), KeyHeader),
    responses((status = 201, body = DeviceRegistered),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              BodyProblems,
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn register_device(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    MaybeKey(key): MaybeKey,
    uri: Uri,
    OptionalJson(body): OptionalJson<RegisterDevice>,
) -> Result<Answer> {
    principal.ensure_can_access(user_id)?;
    let chosen = match &body.device_id {
        // Choosing an id is for the provisioning service (it issues the certificate with that
        // id): a person's token gets a random id, so nobody can claim an id meant for a phone
        // that is still being provisioned.
        Some(_) if principal != Principal::Admin => return Err(Error::Forbidden),
        Some(raw) => Some(
            DeviceId::parse(raw.clone()).map_err(|e| Error::invalid("device_id", e.to_string()))?,
        ),
        None => None,
    };
    let once = key.map(|k| Once::new(&state.idempotency, principal, &k, uri.path(), &body));
    if let Some(replay) = idempotency::replay(once.as_ref(), &state.pool).await? {
        return Ok(replay);
    }
    let (pool, once, chosen) = (&state.pool, once.as_ref(), &chosen);
    people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        let answer = idempotency::answer_once!(once, &mut tx, StatusCode::CREATED, {
            let device_id = chosen.clone().unwrap_or_else(DeviceId::random);
            devices::register(&mut tx, device_id).await?
        });
        tx.finish().await?;
        Ok(answer)
    })
    .await
}

/// Revoke a phone: from now on ingest accepts nothing from it and no notification goes to it.
/// The broker is told within about a second (the revocation publisher) and cuts the phone off: it
/// refuses its certificate at the TLS handshake and disconnects it if it is connected.
#[utoipa::path(delete, path = "/v1/users/{user_id}/devices/{device_id}", tag = "devices",
    params(("user_id" = Uuid, Path, description = "The person."),
           ("device_id" = String, Path, pattern = "^[A-Za-z0-9]{1,32}$", description = "The phone.")),
    responses((status = 204, description = "Revoked (or already revoked)."),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn revoke_device(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((user_id, device_id)): ApiPath<(Uuid, DeviceId)>,
) -> Result<StatusCode> {
    principal.ensure_can_access(user_id)?;
    let (pool, device_id) = (&state.pool, &device_id);
    people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        devices::revoke(&mut tx, device_id).await?;
        tx.finish().await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTransaction {
    /// The bank's own id of the transaction: posting it twice is harmless.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub external_ref: String,
    pub direction: Direction,
    /// Amount in cents.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount_cents: i64,
    /// e.g. salary, rent, groceries, entertainment; stored lower-cased, and at most 50
    /// characters once lower-cased.
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub category: String,
    /// When it happened; at most 5 minutes in the future (clock skew).
    pub occurred_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordTransactions {
    #[schema(min_items = 1, max_items = 1000)]
    pub transactions: Vec<NewTransaction>,
}

/// Record a person's financial transactions (admin/service only), idempotent by `external_ref`.
#[utoipa::path(post, path = "/v1/users/{user_id}/transactions", tag = "finance",
    request_body = RecordTransactions,
    params(("user_id" = Uuid, Path, description = "The person."), KeyHeader),
    responses((status = 201, body = TransactionsRecorded),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "An `external_ref` is already recorded with other values; nothing was stored.",
               body = Problem, content_type = "application/problem+json"),
              BodyProblems,
              AuthProblems),
    security(("bearer" = [])))]
pub(super) async fn record_transactions(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    MaybeKey(key): MaybeKey,
    uri: Uri,
    ApiJson(body): ApiJson<RecordTransactions>,
) -> Result<Answer> {
    principal.ensure_admin()?;
    if body.transactions.is_empty() || body.transactions.len() > MAX_TRANSACTIONS_PER_REQUEST {
        return Err(Error::invalid(
            "transactions",
            format!("send 1-{MAX_TRANSACTIONS_PER_REQUEST} transactions per request"),
        ));
    }
    let txs = body
        .transactions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Transaction::parse(
                &format!("transactions[{i}]"),
                &t.external_ref,
                t.direction,
                t.amount_cents,
                &t.category,
                t.occurred_at,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let once = key.map(|k| Once::new(&state.idempotency, principal, &k, uri.path(), &body));
    if let Some(replay) = idempotency::replay(once.as_ref(), &state.pool).await? {
        return Ok(replay);
    }
    let (pool, once, txs) = (&state.pool, once.as_ref(), &txs);
    people::retry(|| async move {
        let mut tx = PersonTx::lock(pool, user_id).await?;
        let answer = idempotency::answer_once!(
            once,
            &mut tx,
            StatusCode::CREATED,
            finance::record(&mut tx, txs).await?
        );
        tx.finish().await?;
        Ok(answer)
    })
    .await
}
