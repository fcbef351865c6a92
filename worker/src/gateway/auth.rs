//! Bearer tokens: who a request speaks for.
//!
//! ```text
//!  Authorization: Bearer <JWT> ──verify (HS256 secret | JWKS key by kid)──> exp, nbf, aud, iss checked
//!     ──> Peer { name: sub, claims } ──> sync_act_for_peer(name, claims) in the hub:
//!         the peer's registered role (SET LOCAL ROLE) and sync_claim()
//! ```
//!
//! The gateway decides only that the token is genuine and current. Which
//! role the peer is, and what that role may do, is the hub's: an unknown
//! peer is refused there (401), a table outside its privileges too (403).
//! A token never reaches a log line.

use super::config::AuthConfig;
use super::error::ApiError;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Who a request speaks for: the token's `sub` and all its claims.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub claims: Map<String, Value>,
}

struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: Vec<PublicKey>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

/// The asymmetric algorithms a JWKS key may name.
const PUBLIC_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::PS256,
];

impl Verifier {
    pub fn new(c: &AuthConfig) -> Result<Verifier, String> {
        let secret = match &c.hs256_secret {
            Some(s) => Some(
                DecodingKey::from_secret(s.as_bytes())
                    .map_err(|e| format!("TRIBUTARY_GATEWAY_JWT_SECRET: {e}"))?,
            ),
            None => None,
        };
        let mut keys = Vec::new();
        if let Some(path) = &c.jwt_public_keys {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("gateway.auth.jwt_public_keys {path}: {e}"))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("gateway.auth.jwt_public_keys {path}: not a JWKS: {e}"))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                    .or_else(|| default_algorithm(jwk))
                    .filter(|a| PUBLIC_ALGORITHMS.contains(a))
                    .ok_or_else(|| {
                        format!("gateway.auth.jwt_public_keys {path}: key {i} has no usable alg (RS256, PS256, ES256 or EdDSA)")
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("gateway.auth.jwt_public_keys {path}: key {i}: {e}"))?;
                keys.push(PublicKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
            if keys.is_empty() {
                return Err(format!("gateway.auth.jwt_public_keys {path}: no keys"));
            }
        }
        Ok(Verifier {
            secret,
            keys,
            audience: c.audience.clone(),
            issuer: c.issuer.clone(),
            leeway: c.leeway_s,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        v
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Peer, ApiError> {
        let token = bearer(authorization)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized("the token is not a JWT").detail(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref().ok_or_else(|| {
                ApiError::unauthorized("HS256 tokens are not accepted here")
                    .hint("The gateway verifies tokens with its public keys (gateway.auth.jwt_public_keys).")
            })?,
            alg => {
                let candidates = self
                    .keys
                    .iter()
                    .filter(|k| k.alg == alg && (header.kid.is_none() || k.kid == header.kid));
                let mut last = None;
                for k in candidates {
                    match decode(token, &k.key, &self.validation(alg)) {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| {
                    ApiError::unauthorized("no key verifies this token").detail(format!(
                        "alg {alg:?}, kid {}",
                        header.kid.as_deref().unwrap_or("(none)")
                    ))
                }));
            }
        };
        decode(token, key, &self.validation(Algorithm::HS256))
    }
}

fn default_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    match &jwk.algorithm {
        P::RSA(_) => Some(Algorithm::RS256),
        P::EllipticCurve(_) => Some(Algorithm::ES256),
        P::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn bearer(authorization: Option<&str>) -> Result<&str, ApiError> {
    let Some(h) = authorization else {
        return Err(ApiError::unauthorized("no token")
            .hint("Send Authorization: Bearer <JWT>, signed for this gateway, with sub = your peer name and exp."));
    };
    let (scheme, token) = h.trim().split_once(' ').unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(
            ApiError::unauthorized("the Authorization header is not a bearer token")
                .hint("Send Authorization: Bearer <JWT>."),
        );
    }
    Ok(token.trim())
}

fn decode(token: &str, key: &DecodingKey, v: &Validation) -> Result<Peer, ApiError> {
    use jsonwebtoken::errors::ErrorKind as K;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, v).map_err(|e| {
        let missing;
        let (message, hint) = match e.kind() {
            K::ExpiredSignature => ("the token has expired", "Get a new token."),
            K::ImmatureSignature => (
                "the token is not valid yet (nbf)",
                "Check the clocks of the issuer and the gateway.",
            ),
            K::InvalidSignature => (
                "the token's signature does not verify",
                "Use a token issued for this gateway.",
            ),
            K::InvalidAudience => (
                "the token is for another audience",
                "Use a token whose aud names this gateway (gateway.auth.audience).",
            ),
            K::InvalidIssuer => (
                "the token is from another issuer",
                "Use a token of the issuer the gateway trusts (gateway.auth.issuer).",
            ),
            K::MissingRequiredClaim(c) => {
                missing = format!("the token lacks a valid {c} claim");
                (
                    missing.as_str(),
                    "A token needs exp and sub (the peer's name, a string).",
                )
            }
            K::InvalidAlgorithm => (
                "the token's algorithm does not match the key",
                "Sign with the algorithm of the gateway's key.",
            ),
            _ => (
                "the token is not valid",
                "Use a token issued for this gateway.",
            ),
        };
        ApiError::unauthorized(message)
            .detail(e.to_string())
            .hint(hint)
    })?;
    let claims = data.claims;
    let name =
        match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            _ => return Err(
                ApiError::unauthorized("the token's sub is not a peer name").hint(
                    "sub is the peer's name, as registered with sync_set_peer (1 to 255 bytes).",
                ),
            ),
        };
    Ok(Peer { name, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(audience: Option<&str>) -> Verifier {
        Verifier::new(&AuthConfig {
            hs256_secret: Some(SECRET.into()),
            audience: audience.map(str::to_string),
            leeway_s: 0,
            ..Default::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_current_token_names_its_peer_and_keeps_its_claims() {
        let t = token(
            json!({"sub": "kiosk-1", "exp": now() + 60, "tenant": "a"}),
            SECRET,
        );
        let p = verifier(None).verify(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(p.name, "kiosk-1");
        assert_eq!(p.claims["tenant"], "a");
    }

    #[test]
    fn bad_tokens_are_refused_each_with_its_reason() {
        let v = verifier(Some("tributary"));
        let good = json!({"sub": "p", "exp": now() + 60, "aud": "tributary"});
        let cases = [
            (None, "no token"),
            (Some("Basic abc".to_string()), "not a bearer token"),
            (Some("Bearer x.y".to_string()), "not a JWT"),
            (
                Some(format!(
                    "Bearer {}",
                    token(good.clone(), "another-secret-another-secret-xx")
                )),
                "does not verify",
            ),
            (
                Some(format!(
                    "Bearer {}",
                    token(
                        json!({"sub": "p", "exp": now() - 10, "aud": "tributary"}),
                        SECRET
                    )
                )),
                "expired",
            ),
            (
                Some(format!(
                    "Bearer {}",
                    token(json!({"sub": "p", "aud": "tributary"}), SECRET)
                )),
                "valid exp claim",
            ),
            (
                Some(format!(
                    "Bearer {}",
                    token(
                        json!({"sub": "p", "exp": now() + 60, "aud": "other"}),
                        SECRET
                    )
                )),
                "another audience",
            ),
            (
                Some(format!(
                    "Bearer {}",
                    token(
                        json!({"sub": 7, "exp": now() + 60, "aud": "tributary"}),
                        SECRET
                    )
                )),
                "sub",
            ),
            (
                Some(format!(
                    "Bearer {}",
                    token(
                        json!({"sub": "", "exp": now() + 60, "aud": "tributary"}),
                        SECRET
                    )
                )),
                "not a peer name",
            ),
        ];
        for (h, want) in cases {
            let e = v.verify(h.as_deref()).unwrap_err();
            assert_eq!(e.status.as_u16(), 401, "{want}");
            assert!(e.message.contains(want), "{want}: got {}", e.message);
        }
        assert!(v
            .verify(Some(&format!("Bearer {}", token(good, SECRET))))
            .is_ok());
    }
}
