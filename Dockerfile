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
COPY migrations migrations
# rdkafka with one fix, patched in by Cargo.toml.
COPY vendor vendor
RUN cargo build --release --locked --bin wskafka

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 wskafka \
 && mkdir /var/lib/wskafka && chown wskafka /var/lib/wskafka
COPY --from=build /src/target/release/wskafka /usr/local/bin/wskafka
USER wskafka
# Where the default SQLite database goes when WSKAFKA_DATABASE_URL is not set.
WORKDIR /var/lib/wskafka
VOLUME /var/lib/wskafka
ENV WSKAFKA_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["wskafka"]
CMD ["serve"]
