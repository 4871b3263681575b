package wskafka

import kotlinx.coroutines.delay
import kotlinx.coroutines.withTimeout
import org.apache.kafka.clients.admin.Admin
import org.apache.kafka.clients.admin.NewTopic
import org.apache.kafka.clients.consumer.KafkaConsumer
import org.apache.kafka.clients.producer.KafkaProducer
import org.apache.kafka.clients.producer.ProducerRecord
import org.apache.kafka.common.TopicPartition
import org.apache.kafka.common.serialization.StringDeserializer
import org.apache.kafka.common.serialization.StringSerializer
import java.io.File
import java.net.ServerSocket
import java.time.Duration
import java.util.Base64
import java.util.Properties
import java.util.UUID
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec

// The real parts the tests run against: hubs started from the built binary (WSKAFKA_BIN),
// the broker in WSKAFKA_TEST_BROKERS, tokens signed with the hubs' test secret.

const val SECRET = "integration-test-secret-of-32-bytes"
const val PATIENCE_MS = 20_000L

val brokers: String = System.getenv("WSKAFKA_TEST_BROKERS") ?: "127.0.0.1:19092"

fun unique(prefix: String) = "$prefix-${UUID.randomUUID().toString().take(8)}"

fun freePort(): Int = ServerSocket(0).use { it.localPort }

/** Waits until [check] holds, polling; fails after PATIENCE_MS with [what]. */
suspend fun eventually(what: String, check: suspend () -> Boolean) {
    val deadline = System.currentTimeMillis() + PATIENCE_MS
    while (!check()) {
        if (System.currentTimeMillis() > deadline) throw AssertionError("never happened: $what")
        delay(20)
    }
}

suspend fun <T> patiently(block: suspend () -> T): T = withTimeout(PATIENCE_MS) { block() }

fun createTopic(name: String, partitions: Int) {
    Admin.create(mapOf<String, Any>("bootstrap.servers" to brokers)).use { admin ->
        admin.createTopics(listOf(NewTopic(name, partitions, 1.toShort()))).all().get(PATIENCE_MS, TimeUnit.MILLISECONDS)
    }
}

fun producer(): KafkaProducer<String, String> = KafkaProducer(
    mapOf<String, Any>("bootstrap.servers" to brokers, "acks" to "all", "linger.ms" to 0),
    StringSerializer(),
    StringSerializer(),
)

/** Every record of [topic] as (partition, offset) to value, read from the start to the end. */
fun readAll(topic: String, partitions: Int): Map<Pair<Int, Long>, String> {
    val props = Properties().apply { put("bootstrap.servers", brokers) }
    KafkaConsumer(props, StringDeserializer(), StringDeserializer()).use { consumer ->
        val parts = (0 until partitions).map { TopicPartition(topic, it) }
        consumer.assign(parts)
        consumer.seekToBeginning(parts)
        val end = consumer.endOffsets(parts)
        val records = HashMap<Pair<Int, Long>, String>()
        val deadline = System.currentTimeMillis() + PATIENCE_MS
        while (parts.any { consumer.position(it) < end.getValue(it) }) {
            check(System.currentTimeMillis() < deadline) { "reading $topic" }
            for (r in consumer.poll(Duration.ofMillis(200))) records[r.partition() to r.offset()] = r.value()
        }
        return records
    }
}

/** An HS256 token for [sub], valid for [ttlSeconds]: publish and subscribe [topics], see everyone online. */
fun token(sub: String, topics: List<String>, ttlSeconds: Long = 3600): String {
    val enc = Base64.getUrlEncoder().withoutPadding()
    val now = System.currentTimeMillis() / 1000
    val list = topics.joinToString(",") { "\"$it\"" }
    val header = """{"alg":"HS256","typ":"JWT"}"""
    val claims = """{"sub":"$sub","iat":$now,"exp":${now + ttlSeconds},"jti":"${UUID.randomUUID()}",""" +
        """"wskafka":{"publish":[$list],"subscribe":[$list],"online":["*"]}}"""
    val body = enc.encodeToString(header.toByteArray()) + "." + enc.encodeToString(claims.toByteArray())
    val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(SECRET.toByteArray(), "HmacSHA256")) }
    return body + "." + enc.encodeToString(mac.doFinal(body.toByteArray()))
}

/** A hub from the built binary, on [port] (a free one by default), serving [topics]. */
class Hub(val topics: String, val extra: List<String> = emptyList(), val port: Int = freePort()) : AutoCloseable {
    private val database = File.createTempFile("wskafka-kotlin", ".sqlite").also { it.deleteOnExit() }
    private val process: Process
    val url get() = "ws://127.0.0.1:$port/ws"

    init {
        val binary = System.getenv("WSKAFKA_BIN") ?: error("WSKAFKA_BIN names the hub binary (scripts/test sets it)")
        val command = listOf(
            binary, "serve", "--listen", "127.0.0.1:$port", "--topics", topics, "--brokers", brokers,
            "--jwt-secret", SECRET, "--jwt-leeway", "0s", "--database-url", "sqlite://${database.path}?mode=rwc",
        ) + extra
        process = ProcessBuilder(command).redirectErrorStream(true).start()
        val listening = CompletableFuture<Unit>()
        Thread {
            // The stream closes under the reader when the hub is killed: that ends the log.
            runCatching {
                process.inputStream.bufferedReader().forEachLine { line ->
                    if (System.getenv("WSKAFKA_HUB_LOG") != null) System.err.println("hub $port: $line")
                    if ("listening on http://" in line) listening.complete(Unit)
                }
            }
            listening.completeExceptionally(IllegalStateException("the hub exited before listening"))
        }.apply { isDaemon = true }.start()
        listening.get(PATIENCE_MS, TimeUnit.MILLISECONDS)
        waitReady()
    }

    private fun waitReady() {
        val deadline = System.currentTimeMillis() + PATIENCE_MS
        while (true) {
            val ready = runCatching {
                val connection = java.net.URL("http://127.0.0.1:$port/readyz").openConnection() as java.net.HttpURLConnection
                connection.responseCode == 200
            }.getOrDefault(false)
            if (ready) return
            check(System.currentTimeMillis() < deadline) { "the hub on $port never got ready" }
            Thread.sleep(50)
        }
    }

    /** Kills it without a goodbye, as a crash or a lost machine would. */
    fun kill() {
        process.destroyForcibly().waitFor()
    }

    override fun close() {
        process.destroy()
        if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly().waitFor()
    }
}
