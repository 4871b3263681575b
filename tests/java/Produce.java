// A backend producing with Kafka's own Java client and its default partitioner (murmur2 for
// keyed records), for tests/rooms.rs: reads `key<TAB>value` lines from stdin, sends each to
// the topic, waits for every acknowledgement, and prints `partition offset` per record.
// Run as a single source file: java -cp '<kafka libs>/*' Produce.java BROKERS TOPIC
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

public class Produce {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        props.put("acks", "all");
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                String[] parts = line.split("\t", 2);
                sent.add(producer.send(new ProducerRecord<>(args[1], parts[0], parts[1])));
            }
            producer.flush();
            for (Future<RecordMetadata> future : sent) {
                RecordMetadata metadata = future.get();
                System.out.println(metadata.partition() + " " + metadata.offset());
            }
        }
    }
}
