//! librdkafka's error codes, classified for delivery: retriable (a broker or the network may
//! recover; the record waits or is retried), maybe-written (a message timeout: librdkafka has
//! retried already and a new send could duplicate it) or fatal (retrying cannot help; the
//! record goes to the DLQ at once), each with the short `error_kind` the DLQ record carries.
//!
//! Delivery reports carry a bare error code; librdkafka's own `rd_kafka_error_is_retriable`
//! exists only for `rd_kafka_error_t` objects, so the table follows the Kafka protocol's
//! retriable flags (`org.apache.kafka.common.protocol.Errors`) and librdkafka's local codes.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sinks::{ErrorClass, SHUTDOWN_KIND, SinkError};

/// The class and DLQ `error_kind` of a librdkafka error code.
pub fn classify_code(code: RDKafkaErrorCode) -> (ErrorClass, &'static str) {
    use ErrorClass::{Fatal, MaybeWritten, Retriable};
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull => (Retriable, "queue_full"),
        // librdkafka retried it (safely, with the idempotent producer's sequence numbers)
        // until message.timeout.ms; it may have been written by a request whose answer was
        // lost, and a new send would not be recognised as the same record.
        C::MessageTimedOut | C::RequestTimedOut => (MaybeWritten, "timeout"),
        C::OperationTimedOut | C::TimedOutQueue => (Retriable, "timeout"),
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::BrokerNotAvailable => (Retriable, "transport"),
        C::NotLeaderForPartition
        | C::LeaderNotAvailable
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::ReplicaNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::NotController => (Retriable, "leader_change"),
        C::NotEnoughReplicas | C::NotEnoughReplicasAfterAppend | C::KafkaStorageError => {
            (Retriable, "not_enough_replicas")
        }
        C::ThrottlingQuotaExceeded => (Retriable, "throttled"),
        C::OutOfOrderSequenceNumber | C::UnknownProducerId | C::InvalidProducerEpoch | C::Fatal => {
            (Retriable, "producer_fenced_or_fatal")
        }
        C::PurgeQueue | C::PurgeInflight => (Fatal, SHUTDOWN_KIND),
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            (Fatal, "message_too_large")
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            (Fatal, "unknown_topic")
        }
        C::InvalidTopic => (Fatal, "invalid_topic"),
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => (Fatal, "authorization"),
        C::InvalidMessage | C::InvalidRecord | C::BadMessage => (Fatal, "invalid_message"),
        C::InvalidTimestamp => (Fatal, "invalid_timestamp"),
        C::UnsupportedCompressionType | C::UnsupportedForMessageFormat | C::UnsupportedVersion => {
            (Fatal, "unsupported_by_broker")
        }
        C::PolicyViolation => (Fatal, "policy_violation"),
        _ => (Fatal, "kafka_error"),
    }
}

/// A librdkafka error as a sink error, with a message that says what to do where it can.
pub fn classify(error: &KafkaError) -> SinkError {
    let Some(code) = error.rdkafka_error_code() else {
        return SinkError::fatal("kafka_error", format!("Kafka: {error}"));
    };
    let (class, kind) = classify_code(code);
    let hint = match kind {
        "message_too_large" => {
            "; the record is larger than the producer's `message.max.bytes` or the broker's \
             limit (raise sink.kafka.properties.message.max.bytes and the topic's \
             max.message.bytes together)"
        }
        "unknown_topic" => {
            "; declare the topic under `topics:` (firestream creates declared topics) or \
             create it on the cluster"
        }
        "authorization" => "; check the SASL/SSL settings and the ACLs of firestream's principal",
        "timeout" => {
            "; no broker acknowledged it within message.timeout.ms. It may still have been \
             written (a request in flight when the time ran out): look for its id in the topic \
             before sending it again"
        }
        _ if code == RDKafkaErrorCode::PurgeInflight => {
            "; the shutdown deadline passed while it was in flight. It may have been written: \
             look for its id in the topic before sending it again"
        }
        _ => "",
    };
    SinkError {
        class,
        kind,
        message: format!("Kafka: {error}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_broker_conditions_are_retriable() {
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::ThrottlingQuotaExceeded,
            RDKafkaErrorCode::OperationTimedOut,
        ] {
            assert_eq!(classify_code(code).0, ErrorClass::Retriable, "{code:?}");
        }
    }

    #[test]
    fn a_message_timeout_may_have_been_written_and_is_not_resent() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(
                classify_code(code),
                (ErrorClass::MaybeWritten, "timeout"),
                "{code:?}"
            );
        }
    }

    #[test]
    fn records_the_broker_will_never_take_are_fatal() {
        let cases = [
            (RDKafkaErrorCode::MessageSizeTooLarge, "message_too_large"),
            (RDKafkaErrorCode::UnknownTopicOrPartition, "unknown_topic"),
            (RDKafkaErrorCode::UnknownTopic, "unknown_topic"),
            (RDKafkaErrorCode::TopicAuthorizationFailed, "authorization"),
            (RDKafkaErrorCode::InvalidRecord, "invalid_message"),
            (RDKafkaErrorCode::PurgeQueue, SHUTDOWN_KIND),
        ];
        for (code, kind) in cases {
            assert_eq!(classify_code(code), (ErrorClass::Fatal, kind), "{code:?}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert!(e.message.contains("message.max.bytes"), "{}", e.message);
        let e = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
        assert!(e.message.contains("declare the topic"), "{}", e.message);
        let e = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert!(
            e.message.contains("may still have been written"),
            "{}",
            e.message
        );
        let e = classify(&KafkaError::MessageProduction(
            RDKafkaErrorCode::PurgeInflight,
        ));
        assert_eq!(e.kind, SHUTDOWN_KIND);
        assert!(e.message.contains("may have been written"), "{}", e.message);
    }
}
