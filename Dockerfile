# Two stages: build with the full Rust toolchain, run on a slim Debian with only the
# libraries the binary links (OpenSSL for SASL/SSL brokers; librdkafka is linked in).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY web web
RUN cargo build --release --locked --bin wskafka

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 wskafka
COPY --from=build /src/target/release/wskafka /usr/local/bin/wskafka
USER wskafka
ENV WSKAFKA_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["wskafka"]
CMD ["serve"]
