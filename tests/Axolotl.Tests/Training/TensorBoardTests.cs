using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Training;

namespace Axolotl.Tests.Training;

/// <summary>use_tensorboard: event files that TensorBoard reads, checked by decoding them independently here.</summary>
[Collection(GlobalTorchRng.Name)]
public class TensorBoardTests
{
    [Fact]
    public void Crc32c_matches_the_standard_check_value()
    {
        // The check value of CRC-32C (Castagnoli) for "123456789", from the CRC catalogue.
        Assert.Equal(0xE3069283u, TensorBoardWriter.Crc32C(Encoding.ASCII.GetBytes("123456789")));
    }

    sealed record Event(double WallTime, long Step, string? FileVersion, Dictionary<string, float> Scalars);

    static uint Masked(byte[] bytes)
    {
        uint crc = TensorBoardWriter.Crc32C(bytes);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    /// <summary>TFRecord frames: u64 length, masked crc of the length, data, masked crc of the data.</summary>
    internal static List<byte[]> Records(byte[] file)
    {
        var records = new List<byte[]>();
        for (int at = 0; at < file.Length;)
        {
            var lengthBytes = file[at..(at + 8)];
            Assert.Equal(Masked(lengthBytes), BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 8)));
            int length = (int)BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
            var data = file[(at + 12)..(at + 12 + length)];
            Assert.Equal(Masked(data), BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 12 + length)));
            records.Add(data);
            at += 16 + length;
        }
        return records;
    }

    static ulong Varint(byte[] b, ref int at)
    {
        ulong value = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte x = b[at++];
            value |= (ulong)(x & 0x7f) << shift;
            if (x < 0x80) return value;
        }
    }

    /// <summary>Protobuf fields as (number, wire type, raw value or bytes).</summary>
    internal static IEnumerable<(int Field, int Wire, ulong Number, byte[] Bytes)> Fields(byte[] b)
    {
        var fields = new List<(int, int, ulong, byte[])>();
        for (int at = 0; at < b.Length;)
        {
            var key = Varint(b, ref at);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: fields.Add((field, wire, Varint(b, ref at), [])); break;
                case 1: fields.Add((field, wire, BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(at)), [])); at += 8; break;
                case 5: fields.Add((field, wire, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(at)), [])); at += 4; break;
                case 2: int n = (int)Varint(b, ref at); fields.Add((field, wire, 0, b[at..(at + n)])); at += n; break;
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
        return fields;
    }

    static Event Decode(byte[] data)
    {
        double wallTime = 0; long step = 0; string? version = null;
        var scalars = new Dictionary<string, float>();
        foreach (var f in Fields(data))
        {
            if (f.Field == 1) wallTime = BitConverter.Int64BitsToDouble((long)f.Number);
            else if (f.Field == 2) step = (long)f.Number;
            else if (f.Field == 3) version = Encoding.UTF8.GetString(f.Bytes);
            else if (f.Field == 5)
                foreach (var value in Fields(f.Bytes).Where(v => v.Field == 1))
                {
                    var parts = Fields(value.Bytes).ToList();
                    scalars[Encoding.UTF8.GetString(parts.Single(p => p.Field == 1).Bytes)] = BitConverter.Int32BitsToSingle((int)parts.Single(p => p.Field == 2).Number);
                }
        }
        return new Event(wallTime, step, version, scalars);
    }

    [Fact]
    public void A_run_with_use_tensorboard_writes_the_logged_scalars_as_event_records()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i)}
            sequence_len: 64
            adapter: lora
            lora_r: 4
            lora_alpha: 8
            lora_target_modules: [q_proj, v_proj]
            val_set_size: 2
            eval_steps: 2
            micro_batch_size: 1
            num_epochs: 2
            learning_rate: 0.001
            logging_steps: 1
            bf16: false
            save_strategy: "no"
            use_tensorboard: true
            output_dir: {dir["out"]}
            """);
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));

        var file = Assert.Single(Directory.GetFiles(dir["out/runs"], "events.out.tfevents.*", SearchOption.AllDirectories));
        var events = Records(File.ReadAllBytes(file)).Select(Decode).ToList();
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        Assert.All(events, e => Assert.InRange(e.WallTime, 1.7e9, 1e10));

        var history = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray().Select(e => e!).ToList();
        var logged = events.Skip(1).ToList();
        Assert.Equal(history.Count, logged.Count);
        for (int i = 0; i < history.Count; i++)
        {
            var entry = history[i];
            Assert.Equal((long)entry["step"]!, logged[i].Step);
            foreach (var (key, tag) in new[] { ("loss", "train/loss"), ("learning_rate", "train/learning_rate"), ("grad_norm", "train/grad_norm"), ("eval_loss", "eval/loss") })
                if (entry[key] is { } value) Assert.Equal((float)(double)value, logged[i].Scalars[tag]);
                else Assert.False(logged[i].Scalars.ContainsKey(tag));
        }
        Assert.Contains(logged, e => e.Scalars.ContainsKey("eval/loss"));
    }
}
