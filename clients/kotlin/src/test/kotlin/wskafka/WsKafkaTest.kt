package wskafka

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.put
import org.apache.kafka.clients.producer.ProducerRecord
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.atomic.AtomicInteger

/** The Kotlin client against real hubs and the real broker. */
class WsKafkaTest {
    private fun seq(message: Message) = message.payload!!.jsonObject.getValue("seq").jsonPrimitive.int

    /** Collects a subscription into a list, in the background, until cancelled. */
    private fun CoroutineScope.collect(flow: kotlinx.coroutines.flow.Flow<Message>): Pair<MutableList<Message>, kotlinx.coroutines.Job> {
        // Safe to read while the collector adds (iterating a snapshot).
        val seen = CopyOnWriteArrayList<Message>()
        val job = launch(Dispatchers.Default) { flow.collect { seen.add(it) } }
        return seen to job
    }

    @Test
    fun publishAcksAreKafkaPositionsAndEachRecordArrivesOnce() = runBlocking {
        val topic = unique("kt-acks")
        createTopic(topic, 3)
        Hub(topic).use { hub ->
            val client = WsKafka(hub.url, { token("alice", listOf(topic)) })
            val (seen, job) = collect(client.subscribe(topic, from = Start.Earliest))
            val acks = (0 until 30).map { i ->
                async { client.publish(topic, buildJsonObject { put("seq", i) }, key = "k${i % 7}") }
            }.awaitAll()
            val inKafka = readAll(topic, 3)
            assertEquals(30, inKafka.size)
            acks.forEachIndexed { i, ack ->
                assertEquals("""{"seq":$i}""", inKafka[ack.partition to ack.offset], "ack $i names its record")
            }
            eventually("30 messages") { seen.size >= 30 }
            assertEquals((0 until 30).toList(), seen.map(::seq).sorted(), "each once")
            job.cancelAndJoin()
            client.close()
        }
    }

    @Test
    fun aSocketDroppedMidStreamResumesOnAnotherHubWithEveryRecordOnce() = runBlocking {
        val topic = unique("kt-resume")
        createTopic(topic, 2)
        val first = Hub(topic)
        Hub(topic).use { second ->
            val client = WsKafka(listOf(first.url, second.url), { token("alice", listOf(topic)) },
                WsKafka.Options(backoffMinMs = 50, backoffMaxMs = 200))
            val (seen, job) = collect(client.subscribe(topic))
            eventually("open") { client.state.value == ConnectionState.OPEN }
            // Subscribed once the live stream reaches it: a record written now arrives.
            producer().use { kafka ->
                eventually("subscribed") {
                    kafka.send(ProducerRecord(topic, "k", """{"seq":-1}""")).get()
                    seen.isNotEmpty()
                }
                val before = seen.size
                val writer = launch(Dispatchers.IO) {
                    for (i in 0 until 400) kafka.send(ProducerRecord(topic, "k${i % 5}", """{"seq":$i}""")).get()
                }
                eventually("some of them") { seen.size > before + 50 }
                first.kill()
                writer.join()
            }
            eventually("all 400 after the resume") { seen.count { seq(it) >= 0 } >= 400 }
            val records = seen.filter { seq(it) >= 0 }
            assertEquals((0 until 400).toList(), records.map(::seq).sorted(), "every record once")
            for (partition in 0..1) {
                val offsets = records.filter { it.partition == partition }.map { it.offset }
                assertEquals(offsets.sorted(), offsets, "partition $partition in order")
            }
            job.cancelAndJoin()
            client.close()
        }
        first.close()
    }

    @Test
    fun publishesWaitingWhenTheirHubDiesAreStoredOnceThroughTheOther() = runBlocking {
        val topic = unique("kt-once")
        createTopic(topic, 2)
        // Short bounds, so that a resend whose first attempt may still land waits seconds.
        val bounds = listOf("--ping-interval", "0s", "--pong-timeout", "1s", "--publish-timeout", "3s", "--publish-rate", "10000")
        val first = Hub(topic, bounds)
        Hub(topic, bounds).use { second ->
            val client = WsKafka(listOf(first.url, second.url), { token("alice", listOf(topic)) },
                WsKafka.Options(backoffMinMs = 50, backoffMaxMs = 200))
            eventually("open") { client.state.value == ConnectionState.OPEN }
            val acks = (0 until 200).map { i ->
                async(Dispatchers.Default) { client.publish(topic, buildJsonObject { put("seq", i) }, key = "k${i % 5}") }
            }
            eventually("some acked") { acks.count { it.isCompleted } >= 10 }
            first.kill()
            val done = acks.awaitAll()
            val inKafka = readAll(topic, 2)
            assertEquals((0 until 200).map { """{"seq":$it}""" }.sorted(), inKafka.values.sorted(), "each publish stored once")
            done.forEachIndexed { i, ack ->
                assertEquals("""{"seq":$i}""", inKafka[ack.partition to ack.offset], "ack $i names its record")
            }
            client.close()
        }
        first.close()
    }

    @Test
    fun aSocketClosedAsLaggedResumesWithEveryRecordOnce() = runBlocking {
        val topic = unique("kt-lagged")
        createTopic(topic, 1)
        // A send queue of 8 records: one Kafka fetch of a burst overflows it.
        Hub(topic, listOf("--send-queue", "8")).use { hub ->
            val client = WsKafka(hub.url, { token("alice", listOf(topic)) },
                WsKafka.Options(backoffMinMs = 50, backoffMaxMs = 200))
            val lagged = async(Dispatchers.Default) { client.events.filterIsInstance<Event.Lagged>().first() }
            val (seen, job) = collect(client.subscribe(topic))
            producer().use { kafka ->
                eventually("subscribed") {
                    kafka.send(ProducerRecord(topic, "k", """{"seq":-1}""")).get()
                    seen.isNotEmpty()
                }
                for (i in 0 until 3000) kafka.send(ProducerRecord(topic, "k", """{"seq":$i}"""))
                kafka.flush()
            }
            patiently { lagged.await() }
            eventually("all 3000") { seen.count { seq(it) >= 0 } >= 3000 }
            val records = seen.filter { seq(it) >= 0 }
            assertEquals((0 until 3000).toList(), records.map(::seq), "every record once, in order")
            job.cancelAndJoin()
            client.close()
        }
    }

    @Test
    fun theTokenIsRefreshedBeforeItExpiresWithoutDroppingTheSocket() = runBlocking {
        val topic = unique("kt-token")
        createTopic(topic, 1)
        Hub(topic, listOf("--expiry-warning", "2s")).use { hub ->
            val tokens = AtomicInteger()
            val client = WsKafka(hub.url, {
                tokens.incrementAndGet()
                token("alice", listOf(topic), ttlSeconds = 3)
            })
            val states = CopyOnWriteArrayList<ConnectionState>()
            val watcher = launch(Dispatchers.Default) { client.state.collect { states.add(it) } }
            // Each token lives 3 s and is warned of 2 s before: three tokens span 5 s and more.
            eventually("three tokens") { tokens.get() >= 3 }
            val ack = client.publish(topic, JsonPrimitive("still here"))
            assertEquals(topic, ack.topic)
            assertEquals(ConnectionState.OPEN, client.state.value)
            assertTrue(ConnectionState.RECONNECTING !in states, "one socket throughout: $states")
            watcher.cancelAndJoin()
            client.close()
        }
    }

    @Test
    fun historyPagesMeetTheLiveStreamWithNoGapAndNoRepeat() = runBlocking {
        val topic = unique("kt-history")
        createTopic(topic, 1)
        Hub(topic).use { hub ->
            val client = WsKafka(hub.url, { token("alice", listOf(topic)) })
            for (i in 0 until 9) client.publish(topic, buildJsonObject { put("seq", i) })
            val (seen, job) = collect(client.subscribe(topic))
            // Live once a record written now arrives.
            var next = 9
            eventually("live") {
                client.publish(topic, buildJsonObject { put("seq", next++) })
                seen.isNotEmpty()
            }
            for (i in 0 until 2) client.publish(topic, buildJsonObject { put("seq", next++) })
            eventually("the last live one") { seen.lastOrNull()?.let(::seq) == next - 1 }
            val past = ArrayList<Message>()
            var page: Page
            do {
                page = client.older(topic, limit = 4)
                past.addAll(0, page.messages)
            } while (!page.oldest)
            assertEquals((0 until next).toList(), (past + seen).map(::seq), "history then live, each once")
            job.cancelAndJoin()
            client.close()
        }
    }

    @Test
    fun presenceIsSharedByTwoHubs() = runBlocking {
        val rooms = unique("kt-rooms")
        createTopic(rooms, 1)
        val extra = listOf(
            "--keyed-topics", rooms,
            "--presence-topic", "$rooms.presence", "--roster-topic", "$rooms.roster",
            "--signal-topic", "$rooms.signals", "--control-topic", "$rooms.control",
        )
        Hub(rooms, extra).use { a ->
            Hub(rooms, extra).use { b ->
                val alice = WsKafka(a.url, { token("alice", listOf(rooms)) })
                val bob = WsKafka(b.url, { token("bob", listOf(rooms)) })
                val bobJoined = async(Dispatchers.Default) {
                    alice.events.filterIsInstance<Event.Membership>().first { it.joined && it.user == "bob" }
                }
                val aliceIn = launch(Dispatchers.Default) { alice.subscribe(rooms, key = "lobby", presence = true).collect {} }
                eventually("alice listed") {
                    runCatching { alice.presence(rooms, "lobby").members }.getOrNull() == listOf("alice")
                }
                val bobIn = launch(Dispatchers.Default) { bob.subscribe(rooms, key = "lobby", presence = true).collect {} }
                assertEquals("lobby", patiently { bobJoined.await() }.key)
                eventually("both listed on bob's hub") {
                    runCatching { bob.presence(rooms, "lobby").members }.getOrNull() == listOf("alice", "bob")
                }
                assertTrue(alice.online(listOf("bob")).getValue("bob"))
                bobIn.cancelAndJoin()
                aliceIn.cancelAndJoin()
                alice.close()
                bob.close()
            }
        }
    }
}
