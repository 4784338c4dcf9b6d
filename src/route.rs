//! Which handler a request goes to, from its method and path alone.

use http::Method;

use crate::error::GatewayError;
use crate::openai::Api;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Inference(Api),
    ListModels,
    /// The id, percent-decoded; it may contain `/` (e.g. `meta-llama/Llama-3.1-8B`).
    GetModel(String),
    Health,
    Ready,
}

impl Route {
    /// A short, fixed name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Inference(Api::ChatCompletions) => "chat_completions",
            Route::Inference(Api::Completions) => "completions",
            Route::Inference(Api::Embeddings) => "embeddings",
            Route::Inference(Api::Messages) => "messages",
            Route::ListModels => "list_models",
            Route::GetModel(_) => "get_model",
            Route::Health => "health",
            Route::Ready => "ready",
        }
    }
}

/// Matches a request line. `path` may carry a query string, which is ignored.
pub fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let path_only = path.split_once('?').map_or(path, |(p, _)| p);
    let (route, allowed) = match path_only {
        "/v1/chat/completions" => (Route::Inference(Api::ChatCompletions), Method::POST),
        "/v1/completions" => (Route::Inference(Api::Completions), Method::POST),
        "/v1/embeddings" => (Route::Inference(Api::Embeddings), Method::POST),
        "/v1/messages" => (Route::Inference(Api::Messages), Method::POST),
        "/v1/models" => (Route::ListModels, Method::GET),
        "/health" => (Route::Health, Method::GET),
        "/ready" => (Route::Ready, Method::GET),
        p => match p.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => {
                let id = percent_encoding::percent_decode_str(id)
                    .decode_utf8()
                    .map_err(|_| unknown(method, path_only))?;
                (Route::GetModel(id.into_owned()), Method::GET)
            }
            _ => return Err(unknown(method, path_only)),
        },
    };
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        Ok(route)
    } else {
        Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            path: path_only.to_owned(),
        })
    }
}

fn unknown(method: &Method, path: &str) -> GatewayError {
    GatewayError::UnknownRoute {
        method: method.to_string(),
        path: path.chars().take(256).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions?x=1").unwrap(),
            Route::Inference(Api::ChatCompletions)
        );
        assert_eq!(
            route(&Method::GET, "/v1/models/meta-llama%2FLlama-3").unwrap(),
            Route::GetModel("meta-llama/Llama-3".into())
        );
        assert_eq!(
            route(&Method::GET, "/v1/models/a/b").unwrap(),
            Route::GetModel("a/b".into())
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages").unwrap(),
            Route::Inference(Api::Messages)
        );
        assert_eq!(Route::Inference(Api::Messages).name(), "messages");
        assert_eq!(route(&Method::GET, "/v1/nope").unwrap_err().status(), 404);
        assert_eq!(
            route(&Method::GET, "/v1/models/").unwrap_err().status(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/v1/models/%ff").unwrap_err().status(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/models").unwrap_err().status(),
            405
        );
    }
}
