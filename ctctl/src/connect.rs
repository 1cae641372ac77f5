//! Connecting to the coordinator's client service.

use std::time::Duration;

use ctcluster_proto::client_service_client::ClientServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::CtlError;

/// A client for the coordinator at `url`.
pub async fn connect(url: &str) -> Result<ClientServiceClient<Channel>, CtlError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CtlError::Usage(format!("--coordinator {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| CtlError::Connect {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok(ClientServiceClient::new(channel))
}
